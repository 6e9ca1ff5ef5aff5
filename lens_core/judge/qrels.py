"""Explicit relevance labels from files: human qrels (SPEC §3, issue 16).

Two shapes are read:
- TREC qrels whose docno is a line span: `qid iter repo:path:start-end rel`, fields separated by
  spaces or tabs, `#` comment lines and blank lines skipped, CRLF accepted (trec_eval's rules);
- Parquet in the qrels contract (`qid, repo, path, start_line, end_line, rel`, `source`
  optional), e.g. what `lens-eval judge import` writes.

Every label is checked: a non-empty qid, a docno of the span form, lines >= 1 with start <= end,
an integer grade inside the configured range. Two labels of the same span that disagree are
refused (trec_eval refuses conflicting duplicates too), naming both places; identical repeats
are kept once. Errors are one line naming file:line (TREC) or file:row N (Parquet, 1-based).
A label's `source` is the file's own column when it has one, else `human:<file name>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from lens_core.common.hashing import sha256_file
from lens_core.common.settings import judgments_dir, load_config, qrels_setting

SPAN_KEYS = ["qid", "repo", "path", "start_line", "end_line"]
QRELS_COLUMNS = [*SPAN_KEYS, "rel", "source"]
_DOCNO = r"^(?P<repo>[^:\s]+):(?P<path>\S+):(?P<start_line>\d+)-(?P<end_line>\d+)$"
MAX_QRELS_BYTES = 2 << 30  # a qrels file larger than this is refused before it is read


class QrelsError(ValueError):
    """Bad input in a qrels file: the message is one line naming the file and the line."""


def qrels_paths(spec: str | None) -> list[Path]:
    """The files a setting names: paths separated by commas (or os.pathsep); a directory
    stands for the `*.parquet` and `*.qrels`/`*.txt` files directly inside it."""
    out: list[Path] = []
    for part in (spec or "").replace(os.pathsep, ",").split(","):
        if not part.strip():
            continue
        p = Path(part.strip()).expanduser()
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in (".parquet", ".qrels", ".txt") and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise QrelsError(f"{p}: no such qrels file")
    return out


def human_qrels_paths(setting: str | None, judgments_dir: Path | None) -> list[Path]:
    """The human qrels of a run: the files `LENS_QRELS` names, then the judgments directory
    (`lens-eval judge import` writes there), each file once."""
    paths = qrels_paths(setting)
    if judgments_dir is not None and Path(judgments_dir).is_dir():
        paths += qrels_paths(str(judgments_dir))
    seen: set[Path] = set()
    return [p for p in paths if not (p.resolve() in seen or seen.add(p.resolve()))]


def qrels_manifest(paths: Iterable[Path]) -> dict[str, str]:
    """{path: sha256} of the human qrels files a run read (recorded in the attestation)."""
    return {str(p): sha256_file(p) for p in paths}


def _trec(path: Path) -> pl.DataFrame:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise QrelsError(f"{path}:{line}: not UTF-8 (byte {e.start})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        f = s.split()
        if len(f) != 4:
            raise QrelsError(f"{path}:{i}: expected 4 fields (qid iter repo:path:start-end rel), got {len(f)}")
        rows.append((i, f[0], f[2], f[3]))
    df = pl.DataFrame(
        rows, schema={"lineno": pl.Int64, "qid": pl.String, "docno": pl.String, "rel_text": pl.String}, orient="row"
    )
    ext = df.with_columns(pl.col("docno").str.extract_groups(_DOCNO).alias("_d")).unnest("_d")
    bad = ext.filter(pl.col("repo").is_null())
    if bad.height:
        r = bad.row(0, named=True)
        raise QrelsError(f"{path}:{r['lineno']}: docno {r['docno']!r} is not repo:path:start-end")
    ext = ext.with_columns(
        pl.col("rel_text").cast(pl.Int64, strict=False).alias("rel"),
        pl.col("start_line", "end_line").cast(pl.Int64, strict=False),
    )
    bad = ext.filter(pl.col("rel").is_null())
    if bad.height:
        r = bad.row(0, named=True)
        raise QrelsError(f"{path}:{r['lineno']}: relevance {r['rel_text']!r} is not an integer")
    return ext.with_columns(
        pl.lit(f"human:{path.name}").alias("source"),
        pl.format("{}:{}", pl.lit(str(path)), pl.col("lineno")).alias("where"),
    )


def _parquet(path: Path) -> pl.DataFrame:
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any reader error is the file's fault: one line
        raise QrelsError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    missing = [c for c in [*SPAN_KEYS, "rel"] if c not in df.columns]
    if missing:
        raise QrelsError(f"{path}: missing column(s) {', '.join(missing)} of the qrels contract")
    df = df.with_row_index("lineno", offset=1).with_columns(pl.col("lineno").cast(pl.Int64))
    for c, t in (("start_line", pl.Int64), ("end_line", pl.Int64), ("rel", pl.Int64)):
        if not df.schema[c].is_integer():
            raise QrelsError(f"{path}: column {c} is {df.schema[c]}, not an integer")
        df = df.with_columns(pl.col(c).cast(t))
    if "source" not in df.columns:
        df = df.with_columns(pl.lit(f"human:{path.name}").alias("source"))
    df = df.with_columns(pl.col("source").fill_null(f"human:{path.name}").cast(pl.String))
    return df.with_columns(pl.format("{}: row {}", pl.lit(str(path)), pl.col("lineno")).alias("where"))


def _check(df: pl.DataFrame, grades: Sequence[int]) -> None:
    lo, hi = min(grades), max(grades)
    rules = [
        (pl.col("qid").is_null() | (pl.col("qid").str.strip_chars() == ""), lambda r: "empty qid"),
        (
            pl.col("repo").is_null() | pl.col("path").is_null() | (pl.col("repo") == "") | (pl.col("path") == ""),
            lambda r: "empty repo or path",
        ),
        (pl.col("start_line").is_null() | pl.col("end_line").is_null(), lambda r: "line span missing"),
        (pl.col("start_line") < 1, lambda r: f"start line {r['start_line']} < 1"),
        (pl.col("start_line") > pl.col("end_line"), lambda r: f"span start {r['start_line']} > end {r['end_line']}"),
        (
            pl.col("rel").is_null() | (pl.col("rel") < lo) | (pl.col("rel") > hi),
            lambda r: f"relevance {r['rel']} outside the configured grades {lo}..{hi}",
        ),
    ]
    for cond, msg in rules:
        bad = df.filter(cond)
        if bad.height:
            r = bad.sort("order").row(0, named=True)
            raise QrelsError(f"{r['where']}: {msg(r)}")


def _conflicts(df: pl.DataFrame) -> None:
    g = (
        df.group_by(SPAN_KEYS)
        .agg(
            pl.col("rel").n_unique().alias("n"),
            pl.col("where").sort_by("order"),
            pl.col("rel").sort_by("order"),
            pl.col("order").min(),
        )
        .filter(pl.col("n") > 1)
        .sort("order")
    )
    if g.height:
        r = g.row(0, named=True)
        d = f"{r['repo']}:{r['path']}:{r['start_line']}-{r['end_line']}"
        first, other = r["where"][0], next(w for w, v in zip(r["where"], r["rel"]) if v != r["rel"][0])
        raise QrelsError(
            f"{other}: conflicting label for {r['qid']} {d}: rel "
            f"{next(v for v in r['rel'] if v != r['rel'][0])} here, {r['rel'][0]} at {first}"
        )


def read_qrels_files(paths: Iterable[str | os.PathLike], grades: Sequence[int]) -> pl.DataFrame:
    """Every label of the files (QRELS_COLUMNS, one row per span), checked as the module says."""
    frames = []
    for p in map(Path, paths):
        if not p.is_file():
            raise QrelsError(f"{p}: no such qrels file")
        if p.stat().st_size > MAX_QRELS_BYTES:
            raise QrelsError(f"{p}: {p.stat().st_size} bytes, over the {MAX_QRELS_BYTES} a qrels file may have")
        df = _parquet(p) if p.suffix == ".parquet" else _trec(p)
        frames.append(df.select("where", "lineno", *SPAN_KEYS, "rel", "source"))
    if not frames:
        return empty_qrels()
    df = pl.concat(frames, how="vertical_relaxed").with_row_index("order")
    _check(df, grades)
    _conflicts(df)
    return (
        df.sort("order")
        .unique(SPAN_KEYS, keep="first", maintain_order=True)
        .select(*SPAN_KEYS, "rel", "source")
        .with_columns(pl.col("start_line", "end_line", "rel").cast(pl.Int32))
    )


def empty_qrels() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "qid": pl.String,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "rel": pl.Int32,
            "source": pl.String,
        }
    )


def known_qids(qrels: pl.DataFrame, queries: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """(labels of the suite's queries, the sorted unknown qids). trec_eval ignores labels of
    queries it is not scoring; so does the chain, and it says which."""
    unknown = qrels.join(queries.select("qid"), on="qid", how="anti")["qid"].unique().sort().to_list()
    return qrels.join(queries.select("qid"), on="qid", how="semi"), unknown


def check_human_qrels() -> list[Path]:
    """Read and check the human qrels a run would read (LENS_QRELS, the judgments dir) before
    the run starts: raises QrelsError with file and line on the first bad label."""
    paths = human_qrels_paths(qrels_setting(), judgments_dir())
    read_qrels_files(paths, load_config().judging.grades)
    return paths
