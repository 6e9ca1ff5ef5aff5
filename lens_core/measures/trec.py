"""trec_eval-compatible evaluation (issue 19): ordinary TREC files in, trec_eval's text out.

Reading follows trec_eval 10.0 (`get_trec_results.c`, `get_qrels.c`): fields are separated by
any run of spaces or tabs (CRLF line ends too); blank lines and lines starting with `#` are
skipped; a run line is `qid iter docno rank score tag [anything]` (the iter and rank fields are
not used, extra trailing columns are ignored), a qrels line is exactly `qid iter docno grade`.
Stricter than trec_eval, by the validation contract (`lens_core.common.validate`): a score that
is not a finite number and a grade that is not an integer are refused with `file:line`, where
trec_eval's atof/atol would read them as 0.

Evaluation follows `trec_eval.c` and `form_res_rels.c`: the queries evaluated are the judged
queries that the run has (`complete=True`, trec_eval's `-c`: every judged query, the missing
ones with an empty ranking); queries are ordered by their bytes (strcmp); a ranking is sorted by
score descending, ties by docno descending (strcmp); `max_docs` (`-M`) keeps the first N; a
docno twice in one query of the run or of the qrels is refused ("duplicate docs", as trec_eval
does). Credit: `doc` (docno equality), `span` (SPEC §4: docnos `repo:path:start-end`, a hit
earns a relevant span's grade inside it or at line IoU >= 0.5, each span once) or `file`
(same repo and path).

Readers, fastest first, each declining what it does not accept to the next: the C reader
(`_trecscan.c`, built by setup.py; optional) reads both files in one pass each and looks every
run docno up in the qrels at once (doc credit); the polars reader of the common form (docnos
kept as two hashes); the general reader, which names any bad line (`file:line`). All three give
the same `Ranked` table. polars is imported by the last two only: `lens-eval trec` on a file the
C reader takes imports numpy and nothing heavier.

Why this is one module: the three readers produce the three forms of a run that
`evaluate_input` turns into one `Ranked` table, and each falls back on the next; the output
format is a dozen lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lens_core.measures.registry import NONPOOL, UNJUDGED, Measure, Ranked, summarise

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

try:  # the C reader (setup.py builds it; optional: the polars readers give the same values)
    from lens_core.measures import _trecscan
except ImportError:  # pragma: no cover - built without a C compiler
    _trecscan = None

CREDITS = ("doc", "span", "file")
_MAX_LINE = 1 << 20  # lens_core.common.validate.MAX_TREC_LINE (not imported here: pyarrow)
# A run of at least this many bytes is read by the C reader in two parts at once, one per thread
# (each a range of whole lines; joined in file order, every check across the cut); smaller, in one.
_SCAN_SPLIT = 1 << 24
_SPAN = r"^(?P<repo>[^:]+):(?P<path>.+):(?P<start_line>\d+)-(?P<end_line>\d+)$"


def at_line(path, line: int, msg: str) -> ValueError:
    """The validation contract's `file:line: msg` error (`lens_core.common.validate.at_line`)."""
    from lens_core.common.validate import at_line as contract_at_line  # lazy: pyarrow, on errors only

    return contract_at_line(path, line, msg)


def _lines(path: str | os.PathLike, kind: str) -> pl.DataFrame:
    """(lineno, f: list of fields) for every line that is not blank nor a `#` comment."""
    import polars as pl

    from lens_core.common.validate import MAX_TREC_LINE, prescan_lines  # lazy: pyarrow, general reader only

    prescan_lines(path, max_line=MAX_TREC_LINE, utf8=True, kind=f"a TREC {kind} line")
    if os.path.getsize(path) == 0:
        raise at_line(path, 1, f"empty file: a TREC {kind} needs at least one line")
    raw = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",  # a control byte: prescan_lines has refused any file holding one
        new_columns=["line"],
        quote_char=None,
        schema_overrides={"line": pl.String},
        comment_prefix=None,
    )
    return (
        raw.lazy()
        .with_row_index("lineno", offset=1)
        .with_columns(pl.col("line").str.strip_chars(" \t\r"))
        .filter(pl.col("line").is_not_null() & (pl.col("line") != "") & ~pl.col("line").str.starts_with("#"))
        .select("lineno", pl.col("line").str.replace_all(r"[ \t\r]+", " "))
        .collect()
    )


def _fields(t: pl.DataFrame, names: list[str], path, kind: str, exact: bool) -> pl.DataFrame:
    import polars as pl

    n = len(names)
    parts = t.with_columns(pl.col("line").str.splitn(" ", n + 1).alias("_s")).unnest("_s")
    cols = [f"field_{i}" for i in range(n + 1)]
    short = parts.filter(pl.col(cols[n - 1]).is_null())
    if short.height:
        r = short.row(0, named=True)
        raise at_line(path, r["lineno"], f"malformed {kind} line: expected {n} fields ({' '.join(names)})")
    if exact:
        extra = parts.filter(pl.col(cols[n]).is_not_null())
        if extra.height:
            r = extra.row(0, named=True)
            raise at_line(path, r["lineno"], f"malformed {kind} line: more than {n} fields ({' '.join(names)})")
    return parts.select("lineno", *[pl.col(c).alias(nm) for c, nm in zip(cols, names)])


def _numbers(t: pl.DataFrame, column: str, dtype, what: str, path) -> pl.DataFrame:
    import polars as pl

    t = t.with_columns(pl.col(column).cast(dtype, strict=False).alias("_v"))
    bad = t.filter(pl.col("_v").is_null() | (~pl.col("_v").is_finite() if dtype == pl.Float64 else pl.lit(False)))
    if bad.height:
        r = bad.row(0, named=True)
        raise at_line(path, r["lineno"], f"{column} {r[column]!r} is not {what}")
    return t.drop(column).rename({"_v": column})


def _no_duplicates(t: pl.DataFrame, path, kind: str) -> None:
    """trec_eval's "duplicate docs": a docno twice in one query is refused, named by the line
    of its second occurrence."""
    import polars as pl

    dup = t.filter(pl.struct("qid", "docno").is_duplicated())
    if dup.height:
        first = dup.sort("lineno").group_by("qid", "docno", maintain_order=True).agg(pl.col("lineno").head(2))
        row = first.with_columns(pl.col("lineno").list.get(1).alias("_second")).sort("_second").row(0, named=True)
        raise at_line(
            path,
            row["_second"],
            f"duplicate docs: docno {row['docno']!r} of query {row['qid']!r} is also on line {row['lineno'][0]} "
            f"(trec_eval refuses a {kind} with duplicates)",
        )


def read_run(path: str | os.PathLike) -> tuple[pl.DataFrame, str]:
    """(qid, docno, score, lineno), and the run id (the tag of the last line, as trec_eval)."""
    import polars as pl

    t = _fields(_lines(path, "run"), ["qid", "iter", "docno", "rank", "score", "tag"], path, "run", exact=False)
    t = _numbers(t, "score", pl.Float64, "a finite number", path)
    _no_duplicates(t, path, "run")
    runid = t["tag"][-1] if t.height else ""
    return t.select("qid", "docno", "score", "lineno"), runid


def _read_qrels_fast(path) -> pl.DataFrame | None:
    """The qrels through polars' CSV reader when the file is of the common form (one
    separator byte, exactly four fields, integer grades, no duplicate); None otherwise."""
    import polars as pl

    sep = _separator(path, fields=4)
    if sep is None or _has_control_bytes(path):
        return None
    try:
        t = pl.read_csv(
            path,
            has_header=False,
            separator=sep,
            quote_char=None,
            comment_prefix="#",
            schema={"qid": pl.String, "iter": pl.String, "docno": pl.String, "rel": pl.Int64},
        )
    except (pl.exceptions.PolarsError, OSError, ValueError):
        return None
    t = t.select("qid", "docno", "rel")
    bad = pl.any_horizontal(pl.all().is_null()) | (pl.col("qid") == "") | (pl.col("docno") == "")
    if t.height == 0 or t.select(bad.any()).item() or t.select(pl.struct("qid", "docno").is_duplicated().any()).item():
        return None
    return t.with_columns(pl.lit(None, pl.Int64).alias("lineno"))


def read_qrels(path: str | os.PathLike) -> pl.DataFrame:
    """(qid, docno, rel, lineno); lineno is null when the fast reader read the file."""
    import polars as pl

    fast = _read_qrels_fast(path)
    if fast is not None:
        return fast
    t = _fields(_lines(path, "qrels file"), ["qid", "iter", "docno", "rel"], path, "qrels", exact=True)
    t = _numbers(t, "rel", pl.Int64, "an integer grade", path)
    _no_duplicates(t, path, "qrels file")
    return t.select("qid", "docno", "rel", "lineno")


def _split_spans(t: pl.DataFrame, path) -> pl.DataFrame:
    import polars as pl

    ext = t.with_columns(pl.col("docno").str.extract_groups(_SPAN).alias("_d")).unnest("_d")
    ext = ext.with_columns(pl.col("start_line", "end_line").cast(pl.Int64, strict=False))
    bad = ext.filter(
        pl.col("repo").is_null()
        | pl.col("start_line").is_null()
        | pl.col("end_line").is_null()
        | (pl.col("start_line") < 1)
        | (pl.col("start_line") > pl.col("end_line"))
        | (pl.col("end_line") > 2**31 - 1)
    )
    if bad.height:
        r = bad.row(0, named=True)
        raise at_line(
            path, r["lineno"], f"docno {r['docno']!r} is not repo:path:start-end with 1 <= start <= end < 2^31"
        )
    return ext.with_columns(pl.col("start_line", "end_line").cast(pl.Int32))


# ---------------------------------------------------------------------------------------------
# The fast path for the common file: one separator, queries in contiguous blocks, no tie
# ---------------------------------------------------------------------------------------------
_SEEDS = (0x5EED_0001, 0x5EED_0002)  # two independent 64-bit docno hashes: a 128-bit identity
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class FastRun:
    """A run read without its docno strings: `qids` (each query's block, in file order),
    `starts` (len(qids) + 1 block offsets), the docnos' two 64-bit hashes and the scores, rows
    in trec_eval's ranking order within each block."""

    qids: list[str]
    starts: np.ndarray
    k1: np.ndarray
    k2: np.ndarray


# Every byte but the C0 controls that no TREC line may hold (tab, LF and CR are whitespace).
_NOT_CONTROL = bytes(b for b in range(256) if b >= 32 or b in (9, 10, 13))


def _has_control_bytes(path) -> bool:
    """Whether the file holds a control byte (a binary file): a chunked C loop
    (bytes.translate), ~10x cheaper than the line-by-line `prescan_lines`, which then names
    the line on the general path."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            if chunk.translate(None, _NOT_CONTROL):
                return True
    return False


def _separator(path, fields: int = 6) -> str | None:
    """ " " or "\t" when the file's first lines use that one byte between fields and nothing
    else (no run of separators, no leading one, no blank line, at least `fields` fields; a
    qrels line exactly 4); None: the general reader."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    lines = [ln for ln in head.split(b"\n")[:-1] if not ln.startswith(b"#")][:200]
    if not lines:
        return None
    for sep, other in ((b" ", b"\t"), (b"\t", b" ")):
        if all(
            ln
            and other not in ln
            and sep + sep not in ln
            and not ln.startswith(sep)
            and (ln.count(sep) >= 5 if fields == 6 else ln.count(sep) == 3)
            for ln in (x.rstrip(b"\r") for x in lines)
        ):
            return sep.decode()
    return None


def _last_tag(path) -> str:
    """The run id as trec_eval takes it: the tag of the last run line."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 16)))
        tail = f.read()
    for ln in reversed(tail.split(b"\n")):
        parts = ln.decode("utf-8", "replace").split()
        if parts and not parts[0].startswith("#") and len(parts) >= 6:
            return parts[5]
    return ""


def _read_run_fast(path) -> tuple[FastRun, str] | None:
    """The run through polars' CSV reader, docnos kept only as two hashes (memory: no string
    per hit). None when the file is not of the common form (a second separator or a run of
    them, a blank or short line, a bad score, a query in two blocks, tied scores, a possible
    duplicate docno): the general reader then reads it, and names any bad line."""
    import polars as pl

    sep = _separator(path)
    if sep is None or _has_control_bytes(path):
        return None
    try:
        df = (
            pl.scan_csv(
                path,
                has_header=False,
                separator=sep,
                quote_char=None,
                comment_prefix="#",
                schema={
                    **dict.fromkeys(("qid", "iter", "docno", "rank"), pl.String),
                    "score": pl.Float64,
                    "tag": pl.String,
                },
                truncate_ragged_lines=True,
            )
            .select(
                pl.col("qid").cast(pl.Categorical),  # u32 codes: memory
                pl.col("docno").hash(_SEEDS[0]).alias("k1"),
                pl.col("docno").hash(_SEEDS[1]).alias("k2"),
                "score",
                (
                    pl.col("qid").is_null()
                    | (pl.col("qid") == "")
                    | pl.col("docno").is_null()
                    | (pl.col("docno") == "")
                    | pl.col("tag").is_null()
                    | ~pl.col("score").is_finite().fill_null(False)
                ).alias("bad"),
            )
            .collect(engine="streaming")
        )
    except (pl.exceptions.PolarsError, OSError, ValueError):
        return None
    if df.height == 0 or df.get_column("bad").any():
        return None
    q = df.get_column("qid").to_physical().to_numpy()  # one u32 code per qid string
    starts = np.concatenate(([0], np.flatnonzero(q[1:] != q[:-1]) + 1)).astype(np.int64)
    if np.unique(q[starts]).size != starts.size:
        return None  # a query in two blocks
    qids = df.get_column("qid").gather(starts).cast(pl.String)
    score = df.get_column("score").to_numpy()
    k1, k2 = df.get_column("k1").to_numpy(), df.get_column("k2").to_numpy()
    del df  # the qid strings: memory
    same = q[1:] == q[:-1]
    if ((score[1:] >= score[:-1]) & same).any():  # not in ranking order, or tied
        block = np.repeat(np.arange(starts.size, dtype=np.int32), np.diff(np.append(starts, q.size)))
        order = np.lexsort((-score, block))  # blocks stay in place; each sorted by score
        score, k1, k2 = score[order], k1[order], k2[order]
        if ((score[1:] == score[:-1]) & same).any():
            return None  # ties: trec_eval breaks them by docno, which the general reader keeps
    mix = q.astype(np.uint64)  # in place from here: one array of memory
    mix *= _MIX
    mix ^= k1
    mix.sort()
    if (mix[1:] == mix[:-1]).any():
        return None  # maybe a duplicate docno: the general reader decides and names the line
    return FastRun(qids.to_list(), np.append(starts, q.size).astype(np.int64), k1, k2), _last_tag(path)


# ---------------------------------------------------------------------------------------------
# The C reader: both files, every run docno looked up in the qrels as it is read
# ---------------------------------------------------------------------------------------------
@dataclass
class ScannedRun:
    """Both files as the C reader returns them (`_trecscan.c`): the qrels' queries (first
    appearance order), each qrels row's query index and grade; the run's query blocks (file
    order), each block's start and the rows' scores and matching qrels row (-1: not judged),
    rows in trec_eval's ranking order within each block."""

    qrels_qids: list[str]
    qrels_q: np.ndarray
    qrels_rel: np.ndarray
    blocks: list[str]
    starts: np.ndarray
    score: np.ndarray
    match: np.ndarray


def _read_scanned(qrels_path, run_path) -> tuple[ScannedRun, str] | None:
    """Both files through the C reader; None when it is not built or declines a file (the
    polars readers then read them, and the general one names any bad line)."""
    if _trecscan is None:
        return None
    got = _trecscan.scan(os.fspath(qrels_path), os.fspath(run_path), _MAX_LINE, _SCAN_SPLIT)
    if got is None:
        return None
    qq, q, rel, blocks, _block_q, starts, score, match, runid, ordered = got
    starts = np.frombuffer(starts, dtype=np.int64)
    score, match = np.frombuffer(score, dtype=np.float64), np.frombuffer(match, dtype=np.int32)
    if not ordered:  # not in ranking order within a block (or tied): sorted here, ties declined
        block = np.repeat(np.arange(len(blocks), dtype=np.int32), np.diff(starts))
        order = np.lexsort((-score, block))  # blocks stay in place; each sorted by score
        score, match = score[order], match[order]
        if ((score[1:] == score[:-1]) & (block[1:] == block[:-1])).any():
            return None  # ties: trec_eval breaks them by docno, which the general reader keeps
    run = ScannedRun(
        qq, np.frombuffer(q, dtype=np.int32), np.frombuffer(rel, dtype=np.int64), blocks, starts, score, match
    )
    return run, runid


def _evaluate_scanned(run: ScannedRun, runid: str, complete: bool, max_docs: int | None) -> Ranked:
    """`evaluate_input` on a `ScannedRun` (doc credit): the query set, the cut, the grades."""
    judged = sorted(run.qrels_qids)  # code point order: the UTF-8 bytes' order (strcmp)
    block = {q: i for i, q in enumerate(run.blocks)}
    qids = judged if complete else [q for q in judged if q in block]
    g = np.array([block.get(q, -1) for q in qids], dtype=np.int64)
    lengths = np.where(g >= 0, np.diff(run.starts)[np.maximum(g, 0)], 0)
    if max_docs is not None:
        lengths = np.minimum(lengths, max_docs)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    if np.array_equal(g, np.arange(len(run.blocks))) and np.array_equal(lengths, np.diff(run.starts)):
        m = run.match  # every block, whole and in order (the common case): no gather
    else:
        m = run.match[np.repeat(run.starts[np.maximum(g, 0)] - offsets[:-1], lengths) + np.arange(offsets[-1])]
    rel = np.full(m.size, NONPOOL, dtype=np.int32)
    found = np.flatnonzero(m >= 0)
    grade = run.qrels_rel[m[found]]
    rel[found] = np.where(grade < 0, UNJUDGED, grade)
    index = {q: i for i, q in enumerate(run.qrels_qids)}
    pos = np.full(len(run.qrels_qids), -1, dtype=np.int64)
    pos[[index[q] for q in qids]] = np.arange(len(qids), dtype=np.int64)
    jq = pos[run.qrels_q]
    keep = jq >= 0
    return Ranked(
        qids=qids,
        offsets=offsets,
        rel=rel,
        judged_q=jq[keep],
        judged_rel=run.qrels_rel[keep],
        runid=runid,
    )


@dataclass
class TrecInput:
    run: pl.DataFrame | FastRun | ScannedRun
    qrels: pl.DataFrame | None  # None with a ScannedRun (which holds the qrels)
    runid: str
    run_path: str
    qrels_path: str


def load(qrels_path, run_path, fast: bool | str = True) -> TrecInput:
    """Both files read and checked (the qrels first, as trec_eval does); nothing evaluated.
    `fast`: True tries the C reader, then the polars reader of the common form
    (`_read_run_fast`); "polars" that one only; False the general reader only. The fast readers
    serve doc credit (`evaluate_input` reads the files again for the other credits)."""
    if fast is True:
        scanned = _read_scanned(qrels_path, run_path)
        if scanned is not None:
            return TrecInput(scanned[0], None, scanned[1], str(run_path), str(qrels_path))
    got = _read_run_fast(run_path) if fast else None  # never raises: errors stay qrels-first
    qrels = read_qrels(qrels_path)
    if got is None:
        run, runid = read_run(run_path)
    else:
        run, runid = got
    return TrecInput(run, qrels, runid, str(run_path), str(qrels_path))


def rank(run: pl.DataFrame, qids: list[str], max_docs: int | None = None) -> pl.DataFrame:
    """The run's rankings of `qids`: sorted by query, then score descending, ties by docno
    descending (trec_eval's comp_sim_docno), cut at `max_docs`, with 1-based `rank`."""
    import polars as pl

    order = pl.DataFrame(
        {"qid": qids, "_qi": np.arange(len(qids), dtype=np.int64)}, schema={"qid": pl.String, "_qi": pl.Int64}
    )
    r = (
        run.lazy()
        .join(order.lazy(), on="qid", how="inner")
        .sort(["_qi", "score", "docno"], descending=[False, True, True])
        .with_columns((pl.int_range(pl.len()).over("_qi") + 1).alias("rank"))
    )
    if max_docs is not None:
        r = r.filter(pl.col("rank") <= max_docs)
    return r.collect()


def _doc_rel(ranked: pl.DataFrame, qrels: pl.DataFrame) -> np.ndarray:
    import polars as pl

    rel = ranked.join(
        qrels.select("qid", "docno", pl.col("rel").alias("_g")), on=["qid", "docno"], how="left", maintain_order="left"
    )
    g = rel.get_column("_g")
    return np.where(g.is_null().to_numpy(), NONPOOL, np.where(g.fill_null(0).to_numpy() < 0, UNJUDGED, g.fill_null(0)))


def _span_rel(ranked: pl.DataFrame, qrels: pl.DataFrame, file_only: bool, paths: tuple[str, str]) -> tuple:
    """(rel per ranked hit, judged table (qid, rel) one row per distinct judged span)."""
    import polars as pl

    from lens_core.measures.metrics import credit_hits, relevant_spans  # lazy: pyarrow, span credit only

    hits = _split_spans(ranked, paths[0]).with_columns(
        pl.lit("trec").alias("run_id"), pl.lit("trec").alias("system"), pl.col("rank").cast(pl.Int32)
    )
    q = _split_spans(qrels, paths[1])
    judged = q.group_by("qid", "repo", "path", "start_line", "end_line").agg(pl.col("rel").max())
    spans = relevant_spans(q.select("qid", "repo", "path", "start_line", "end_line", "rel"))
    credit = credit_hits(hits, spans, file_only=file_only)
    exact = hits.join(
        judged.select("qid", "repo", "path", "start_line", "end_line", pl.col("rel").alias("_j")),
        on=["qid", "repo", "path", "start_line", "end_line"],
        how="left",
        maintain_order="left",
    )
    out = exact.join(credit.select("qid", "rank", "gain"), on=["qid", "rank"], how="left", maintain_order="left")
    gain, j = out.get_column("gain"), out.get_column("_j")
    rel = np.where(
        gain.is_not_null().to_numpy(),
        gain.fill_null(0).to_numpy(),
        np.where(
            j.is_null().to_numpy(),
            NONPOOL,
            np.where(j.fill_null(0).to_numpy() < 0, UNJUDGED, 0),
        ),
    )
    return rel, judged.select("qid", "rel")


def evaluate_input(
    inp: TrecInput,
    complete: bool = False,
    max_docs: int | None = None,
    credit: str = "doc",
) -> Ranked:
    """The `Ranked` table of trec_eval's query set (see the module docstring)."""
    if credit not in CREDITS:
        raise ValueError(f"credit must be one of {', '.join(CREDITS)}, not {credit!r}")
    if isinstance(inp.run, ScannedRun):
        if credit == "doc":
            return _evaluate_scanned(inp.run, inp.runid, complete, max_docs)
        inp = load(inp.qrels_path, inp.run_path, fast=False)
    import polars as pl

    judged_qids = inp.qrels.get_column("qid").unique().sort()
    if isinstance(inp.run, FastRun):
        if credit != "doc":
            inp = load(inp.qrels_path, inp.run_path, fast=False)
        else:
            got = _evaluate_fast(inp.run, inp.qrels, judged_qids, inp.runid, complete, max_docs)
            if got is not None:
                return got
            inp = load(inp.qrels_path, inp.run_path, fast=False)
    if complete:
        qids = judged_qids.to_list()
    else:
        qids = judged_qids.filter(judged_qids.is_in(inp.run.get_column("qid").unique())).to_list()
    ranked = rank(inp.run, qids, max_docs)
    if credit == "doc":
        rel = _doc_rel(ranked, inp.qrels)
        judged = inp.qrels.select("qid", "rel")
    else:
        rel, judged = _span_rel(ranked, inp.qrels, credit == "file", (inp.run_path, inp.qrels_path))
    counts = np.bincount(ranked.get_column("_qi").to_numpy(), minlength=len(qids))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    order = pl.DataFrame(
        {"qid": qids, "_qi": np.arange(len(qids), dtype=np.int64)}, schema={"qid": pl.String, "_qi": pl.Int64}
    )
    j = judged.join(order, on="qid", how="inner")
    return Ranked(
        qids=qids,
        offsets=offsets,
        rel=np.asarray(rel, dtype=np.int64),
        judged_q=j.get_column("_qi").to_numpy().astype(np.int64),
        judged_rel=j.get_column("rel").to_numpy().astype(np.int64),
        runid=inp.runid,
    )


def _evaluate_fast(
    run: FastRun, qrels: pl.DataFrame, judged_qids: pl.Series, runid: str, complete: bool, max_docs: int | None
) -> Ranked | None:
    """`evaluate_input` on a `FastRun`: docno equality is equality of both 64-bit hashes.
    None when two judged docnos of one query share the first hash (the general path then)."""
    import polars as pl

    block = {q: i for i, q in enumerate(run.qids)}
    jq = judged_qids.to_list()
    qids = jq if complete else [q for q in jq if q in block]
    g = np.array([block.get(q, -1) for q in qids], dtype=np.int64)
    lengths = np.where(g >= 0, np.diff(run.starts)[np.maximum(g, 0)], 0)
    if max_docs is not None:
        lengths = np.minimum(lengths, max_docs)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    if np.array_equal(g, np.arange(len(run.qids))) and np.array_equal(lengths, np.diff(run.starts)):
        rows = slice(None)  # every block, whole and in order (the common case): no gather
    else:
        rows = np.repeat(run.starts[np.maximum(g, 0)] - offsets[:-1], lengths) + np.arange(offsets[-1])
    # relevance of each ranked row: a lookup of (block, k1) in the sorted qrels keys, then
    # block and k2 compared (both hashes must agree)
    qi = pl.DataFrame(
        {"qid": qids, "_qi": np.arange(len(qids), dtype=np.int64)}, schema={"qid": pl.String, "_qi": pl.Int64}
    )
    jr = qrels.join(qi, on="qid", how="inner").select(
        "_qi", "rel", pl.col("docno").hash(_SEEDS[0]).alias("k1"), pl.col("docno").hash(_SEEDS[1]).alias("k2")
    )
    j_qi, j_rel = jr.get_column("_qi").to_numpy(), jr.get_column("rel").to_numpy()
    j_k1, j_k2 = jr.get_column("k1").to_numpy(), jr.get_column("k2").to_numpy()
    hq = np.repeat(np.arange(len(qids), dtype=np.int32), lengths)
    key = hq.astype(np.uint64)
    key *= _MIX
    key ^= run.k1[rows]
    jkey = j_k1 ^ (j_qi.astype(np.uint64) * _MIX)
    if np.unique(jkey).size != jkey.size:
        return None  # two judged docnos of a query share a 64-bit hash: the general path
    # a hash join (polars, every core) of the ranked rows' keys on the judged keys
    cand = (
        pl.DataFrame({"key": key})
        .join(
            pl.DataFrame({"key": jkey, "_j": np.arange(jkey.size, dtype=np.int64)}),
            on="key",
            how="left",
            maintain_order="left",
        )
        .get_column("_j")
    )
    del key
    rel = np.full(hq.size, NONPOOL, dtype=np.int32)
    found = cand.is_not_null().to_numpy()
    if found.any():
        c = cand.filter(cand.is_not_null()).to_numpy()
        idx = np.flatnonzero(found)
        ok = (j_qi[c] == hq[idx]) & (j_k2[c] == run.k2[rows][idx])
        grade = j_rel[c[ok]]
        rel[idx[ok]] = np.where(grade < 0, UNJUDGED, grade)
    r = Ranked(
        qids=qids,
        offsets=offsets,
        rel=rel,
        judged_q=j_qi.astype(np.int64),
        judged_rel=j_rel.astype(np.int64),
        runid=runid,
    )
    r.__dict__["hq"] = hq  # the cached property, already built
    return r


def compute(r: Ranked, measures: list[Measure], level: int = 1, convention: str = "v10") -> dict[Measure, np.ndarray]:
    return {m: m.compute(r, level, convention) for m in measures}


def _fmt(m: Measure, v) -> str:
    if m.spec.kind in ("int", "count"):
        return f"{int(v)}"
    return f"{float(v):6.4f}"


def format_trec(
    r: Ranked,
    values: dict[Measure, np.ndarray],
    runid: bool = True,
    per_query: bool = False,
    summary: bool = True,
) -> str:
    """trec_eval's text output: `%-22s\\t%s\\t%6.4f` lines, per query (with -q) then `all`."""
    out: list[str] = []
    if per_query:
        shown = [m for m in values if m.spec.per_query]
        for i, q in enumerate(r.qids):
            for m in shown:
                out.append(f"{m.column:<22}\t{q}\t{_fmt(m, values[m][i])}")
    if summary:
        if runid:
            out.append(f"{'runid':<22}\tall\t{r.runid}")
        for m, v in values.items():
            s = summarise(m, v) if m.family != "num_q" else r.nq
            out.append(f"{m.column:<22}\tall\t{_fmt(m, s)}")
    return "\n".join(out) + ("\n" if out else "")
