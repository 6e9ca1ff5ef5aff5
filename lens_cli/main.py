"""`lens-eval`: results without the UI (SPEC §14).

  lens-eval score   --hits H --qrels Q [--agg A] --out DIR   metrics per query + CIs
  lens-eval compare --per-query P --control C --test T       deltas, CIs, Holm
  lens-eval verify  BUNDLE                                   re-hash and re-score a bundle
  lens-eval run     [--source sim|local|prod]                the weekly chain, in-process
  lens-eval ingest  RAW.ndjson... --out DIR                  raw runs -> agg + hits Parquet
  lens-eval lvm ...                                          LVM champion registry

Errors are one clear line on stderr and a non-zero exit.

Why this is one module: the `lens-eval` parser and the handlers of score, compare, verify and run share the input readers (Parquet contracts, TREC files) and the exit-code conventions; the site, judge and lvm command groups live in their own modules.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import polars as pl

from lens_core.common.calendar import latest_partition

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_BLOCKED = 3  # the run completed and a blocking gate refused publication (reported, paged)


class CliError(Exception):
    """A user-facing error: printed as one line, exit 2."""


# ----------------------------------------------------------------------------------------------
# Input readers: Parquet, or TREC run/qrels whose docno carries a line span
# ----------------------------------------------------------------------------------------------
_DOCNO = r"^(?P<repo>[^:]+):(?P<path>.+):(?P<start_line>\d+)-(?P<end_line>\d+)$"


def _whitespace_table(path: Path, names: list[str], kind: str) -> pl.DataFrame:
    """The lines of a TREC file split into `names` (blank lines skipped), with `lineno`. The file
    is first checked streaming (validate.prescan_lines: text, UTF-8, no absurd line), so that
    a binary or absurd file is refused before it is parsed; an empty one is refused too."""
    from lens_core.common.validate import MAX_TREC_LINE, at_line, prescan_lines  # lazy: score's start-up

    prescan_lines(path, max_line=MAX_TREC_LINE, utf8=True, kind=f"a TREC {kind} line")
    if path.stat().st_size == 0:
        raise at_line(path, 1, f"empty file: a TREC {kind} needs at least one line")
    lines = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",
        new_columns=["line"],
        quote_char=None,
        schema_overrides={"line": pl.String},
    )
    lines = lines.with_row_index("lineno", offset=1).filter(pl.col("line").str.strip_chars() != "")
    if lines.height == 0:
        raise at_line(path, 1, f"empty file: a TREC {kind} needs at least one line (only blank lines)")
    parts = lines.with_columns(
        pl.col("line").str.strip_chars().str.split(by=" ").list.eval(pl.element().filter(pl.element() != "")).alias("f")
    )
    bad = parts.filter(pl.col("f").list.len() != len(names))
    if bad.height:
        r = bad.row(0, named=True)
        raise CliError(
            f"{path}:{r['lineno']}: expected {len(names)} whitespace-separated fields "
            f"({' '.join(names)}), got {len(r['f'])}"
        )
    return parts.select("lineno", *[pl.col("f").list.get(i).alias(n) for i, n in enumerate(names)])


def _split_docno(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    ext = df.with_columns(pl.col("docno").str.extract_groups(_DOCNO).alias("_d")).unnest("_d")
    bad = ext.filter(pl.col("repo").is_null())
    if bad.height:
        r = bad.row(0, named=True)
        raise CliError(f"{path}:{r['lineno']}: docno {r['docno']!r} is not repo:path:start-end")
    # digits only (the pattern): a failed Int64 cast is a number past 2^63
    out = ext.with_columns(pl.col(c).cast(pl.Int64, strict=False).alias(f"_{c}") for c in ("start_line", "end_line"))
    for c in ("start_line", "end_line"):
        bad = out.filter(pl.col(f"_{c}").is_null())
        if bad.height:
            r = bad.row(0, named=True)
            raise CliError(f"{path}:{r['lineno']}: {c} {r[c]} is past 2^31-1")
    return out.drop("start_line", "end_line").rename({"_start_line": "start_line", "_end_line": "end_line"})


def _numbers(t: pl.DataFrame, path: Path, column: str, dtype: pl.DataType, what: str) -> pl.DataFrame:
    """`column` parsed as `dtype`; the first value that is not one is refused with its line."""
    t = t.with_columns(pl.col(column).cast(dtype, strict=False).alias(f"_{column}"))
    bad = t.filter(pl.col(f"_{column}").is_null())
    if bad.height:
        r = bad.row(0, named=True)
        raise CliError(f"{path}:{r['lineno']}: {column} {r[column]!r} is not {what}")
    return t.drop(column).rename({f"_{column}": column})


def _check_lines(t: pl.DataFrame, path: Path, rules) -> None:
    """The validation contract on a TREC file's rows: the first bad row, named by its line."""
    from lens_core.common.validate import at_line, first_violation  # lazy: score's start-up

    v = first_violation(t, rules)
    if v is not None:
        raise at_line(path, t["lineno"][v.row], v.message)


def read_trec_run(path: Path) -> pl.DataFrame:
    """TREC run `qid Q0 repo:path:start-end rank score tag` -> hits (rank re-derived by score,
    as trec_eval does). The file's ranks must still be integers >= 1, unique per (tag, qid),
    and its scores finite (a NaN score would sort first)."""
    from lens_core.common.validate import hits_rules  # lazy: score's start-up

    t = _split_docno(_whitespace_table(path, ["qid", "q0", "docno", "rank", "score", "system"], "run"), path)
    t = _numbers(t, path, "score", pl.Float64, "a number")
    t = _numbers(t, path, "rank", pl.Int64, "an integer")
    _check_lines(t, path, hits_rules(keys=("system", "qid"), ids=("system", "qid", "repo", "path")))
    t = t.with_columns(pl.col("start_line", "end_line").cast(pl.Int32))
    # trec_eval ranks by score descending (ties by docno descending).
    t = t.sort(["system", "qid", "score", "docno"], descending=[False, False, True, True])
    return t.with_columns(
        pl.lit("trec").alias("run_id"),
        pl.int_range(1, pl.len() + 1).over("system", "qid").cast(pl.Int32).alias("rank"),
        pl.lit(True).alias("in_sla"),
        pl.lit(False).alias("why_lex"),
        pl.lit(False).alias("why_struct"),
        pl.lit(False).alias("why_sem"),
        pl.lit(None, pl.Int32).alias("shard"),
    ).select(
        "run_id",
        "system",
        "qid",
        "rank",
        "repo",
        "path",
        "start_line",
        "end_line",
        "score",
        "why_lex",
        "why_struct",
        "why_sem",
        "shard",
        "in_sla",
    )


def read_trec_qrels(path: Path) -> pl.DataFrame:
    """TREC qrels `qid iter repo:path:start-end rel`, grades within the configured ones."""
    from lens_core.common.validate import configured_grades, qrels_rules  # lazy: score's start-up

    t = _split_docno(_whitespace_table(path, ["qid", "iter", "docno", "rel"], "qrels file"), path)
    t = _numbers(t, path, "rel", pl.Int32, "an integer")
    _check_lines(t, path, qrels_rules(configured_grades()))
    t = t.with_columns(pl.col("start_line", "end_line").cast(pl.Int32))
    return t.with_columns(pl.lit("trec").alias("source")).select(
        "qid", "repo", "path", "start_line", "end_line", "rel", "source"
    )


# Columns the score command reads; the rest of the contract must exist but is not loaded.
_SCORE_COLUMNS = {
    "hits": ("run_id", "system", "qid", "rank", "repo", "path", "start_line", "end_line", "score", "in_sla"),
    "qrels": ("qid", "repo", "path", "start_line", "end_line", "rel"),
}


def _contract(kind: str):
    from lens_core.common import contracts  # lazy: score's start-up: contracts import pyarrow

    return {"hits": contracts.HITS_SCHEMA, "qrels": contracts.QRELS_SCHEMA, "agg": contracts.AGG_SCHEMA}.get(kind)


def _polars_type(t) -> pl.DataType:
    """The polars type of a contract's (primitive) Arrow type, without pl.from_arrow (which
    imports pandas: ~0.5 s of the command's start-up)."""
    import pyarrow as pa

    simple = {
        pa.string(): pl.String,
        pa.large_string(): pl.String,
        pa.int32(): pl.Int32,
        pa.int64(): pl.Int64,
        pa.float64(): pl.Float64,
        pa.bool_(): pl.Boolean,
    }
    if t in simple:
        return simple[t]
    return pl.from_arrow(pa.schema([("x", t)]).empty_table()).schema["x"]


def _scan_contract(p: Path, kind: str) -> pl.LazyFrame:
    """A lazy scan of a Parquet table with the schema guard: every contract column must
    exist; the columns the score command uses are cast to the contract's types (a column
    whose values do not fit is refused, named). Only those columns are read."""
    schema = _contract(kind)
    try:
        have = pl.read_parquet_schema(p)
    except Exception as e:  # not a Parquet file, truncated, ...
        raise CliError(f"{p}: cannot read Parquet ({e})") from None
    missing = [f.name for f in schema if f.name not in have]
    if missing:
        raise CliError(f"{p}: required column(s) missing: {', '.join(missing)}")
    typed = {f.name: _polars_type(f.type) for f in schema}  # every contract column has its type (issue 18)
    want = {c: t for c, t in typed.items() if c in _SCORE_COLUMNS[kind]}
    for c, t in typed.items():
        if have[c] == t:
            continue
        if t.is_integer() and have[c].is_float():  # a float where the contract has an integer (a rank of 2.0)
            _refuse_column(p, c, pl.col(c).is_not_null(), f"{{value}} is a {have[c]}: the contract's {c} is an integer")
        # another type (Int64 for Int32, ...): each value must fit; the first that does not is named
        lost = pl.col(c).is_not_null() & pl.col(c).cast(t, strict=False).is_null()
        _refuse_column(p, c, lost, f"{{value!r}} is not a {t} (the contract's type of {c})", required=False)
    cols = [pl.col(c) if have[c] == t else pl.col(c).cast(t, strict=True) for c, t in want.items()]
    return pl.scan_parquet(p).select(cols)


def _refuse_column(p: Path, column: str, bad: pl.Expr, message: str, required: bool = True) -> None:
    """Raise naming the first row (1-based) of Parquet file `p` where `bad` holds (`{value}`:
    its value in `column`); when no row does, the column alone (`required`) or nothing."""
    from lens_core.common.validate import at_row  # lazy: score's start-up

    try:
        first = (
            pl.scan_parquet(p, row_index_name="_row", row_index_offset=1)
            .filter(bad.fill_null(True))
            .select("_row", pl.col(column).alias("_value"))
            .head(1)
            .collect()
        )
    except pl.exceptions.PolarsError as e:  # a column of a type the test cannot read (a list, ...)
        raise CliError(f"{p}: column {column}: {str(e).splitlines()[0]}") from None
    if first.height:
        raise at_row(p, first["_row"][0], column, message.format(value=first["_value"][0]))
    if required:
        raise CliError(f"{p}: column {column}: {message.format(value='a value')}")


def _check_rows(p: Path, df: pl.DataFrame, rules) -> None:
    """The validation contract on a Parquet table read whole: the first bad row, named."""
    from lens_core.common.validate import at_row, first_violation  # lazy: score's start-up

    v = first_violation(df, rules)
    if v is not None:
        raise at_row(p, v.row + 1, v.column, v.message)


def _check_hits_parquet(p: Path) -> None:
    """The whole validation contract on a Parquet hits file: every row, every column of the
    contract (the rows and columns the metrics do not read too: a NaN score, a rank past 50, a
    negative shard), streaming with bounded memory (`validate.parquet_violation`)."""
    from lens_core.common.validate import at_row, parquet_hits_rules, parquet_violation  # lazy: score's start-up

    keys = ("run_id", "system", "qid")
    try:
        v = parquet_violation(
            p,
            parquet_hits_rules(),
            [f.name for f in _contract("hits")],
            unique=(keys, "rank", "duplicate rank {value} for the same (run_id, system, qid)"),
        )
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:  # a column the rules cannot read
        raise CliError(f"{p}: a column does not match the contract ({str(e).splitlines()[0]})") from None
    if v is not None:
        raise at_row(p, *v)


def _check_file(p: Path, lf: pl.LazyFrame, systems: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """What the per-system checks do not see, from the file's statistics where it has them
    (else read): a null run_id, system or rank (rows no per-system read reaches), an empty
    run_id or system, a null or infinite score (the score is not read: the ranks are given;
    a NaN is not in the statistics), a file with no hits. Returns the (run_id, system) pairs."""
    cols = ("run_id", "system", "rank", "score")
    if systems is None:
        keys = lf.select("run_id", "system").unique().collect()
        systems = sorted(keys.drop_nulls().iter_rows())
        stats: list[tuple[int | None, bool]] = [(None, False)] * len(cols)
    else:
        stats = _parquet_column_stats(p, cols)
    messages = {"rank": "rank {value} is not >= 1", "score": "score {value} is not a finite number"}
    for c, (nulls, infinite) in zip(cols, stats):
        if nulls is None or nulls:  # unknown (no statistics) or some: find the row
            _refuse_column(p, c, pl.col(c).is_null(), messages.get(c, f"{c} is empty or null"), required=False)
        if c == "score" and (infinite or nulls is None):  # an infinity in the statistics, or none there
            _refuse_column(p, c, ~pl.col(c).is_finite(), messages[c], required=False)
    for run_id, system in systems:  # the id rules, once per pair
        for c, v in (("run_id", run_id), ("system", system)):
            if not v.strip(" \t\n\r\f\v"):
                _refuse_column(p, c, pl.col(c) == v, f"{c} is empty or null")
    if not systems:
        raise CliError(f"{p}: no hits (a run with zero hits cannot be scored)")
    return systems


def _parquet_column_stats(p: Path, columns: tuple[str, ...]) -> list[tuple[int | None, bool]]:
    """Per column, from the row-group statistics: (nulls, None where a group has no count;
    whether a float column's min or max is infinite)."""
    import math

    import pyarrow.parquet as papq

    meta = papq.ParquetFile(p).metadata
    names = [meta.schema.column(j).name for j in range(meta.num_columns)]
    out: list[tuple[int | None, bool]] = []
    for c in columns:
        nulls: int | None = 0
        infinite = False
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(names.index(c)).statistics
            if st is None or not st.has_null_count:
                nulls = None
                break
            nulls += st.null_count
            if st.has_min_max and isinstance(st.min, float) and not (math.isfinite(st.min) and math.isfinite(st.max)):
                infinite = True
        out.append((nulls, infinite))
    return out


def _parquet_systems(p: Path) -> list[tuple[str, str]] | None:
    """The (run_id, system) pairs of a hits Parquet file from its row-group statistics; only
    row groups that hold more than one pair have those two columns read. None when the
    statistics are missing (the caller then reads the columns)."""
    import pyarrow.parquet as papq

    try:
        f = papq.ParquetFile(p)
        meta = f.metadata
        names = [meta.schema.column(j).name for j in range(meta.num_columns)]
        cols = [names.index("run_id"), names.index("system")]
        pairs: set[tuple[str, str]] = set()
        offset = 0
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            st = [rg.column(j).statistics for j in cols]
            if rg.num_rows == 0:
                continue
            if any(s is None or not s.has_min_max for s in st):
                return None
            if all(s.null_count == 0 and s.min == s.max for s in st):
                pairs.add((st[0].min, st[1].min))
            else:  # a row group spanning two systems: read those two columns of it
                t = (
                    pl.scan_parquet(p)
                    .select("run_id", "system")
                    .slice(offset, rg.num_rows)
                    .unique()
                    .drop_nulls()
                    .collect()
                )
                pairs.update(t.iter_rows())
            offset += rg.num_rows
        return sorted(pairs)
    except Exception:  # statistics absent or unreadable: read the columns instead
        return None


def _collect(lf: pl.LazyFrame, p: Path) -> pl.DataFrame:
    try:
        return lf.collect()
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as e:
        raise CliError(f"{p}: a column does not match the contract's type ({str(e).splitlines()[0]})") from None


def _read_table(path: str, kind: str, check_later: bool = False) -> pl.DataFrame | pl.LazyFrame:
    """hits: a LazyFrame for Parquet (read one system at a time by the metrics, which check
    it as they go), a DataFrame for a TREC run; qrels and agg: DataFrames. Each is checked
    against the validation contract (`lens_core.common.validate`); with `check_later`, the
    whole-file check of a Parquet hits file is left to the caller (`_check_hits_parquet`)."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{p}: no such file")
    if p.suffix == ".parquet":
        from lens_core.common.validate import agg_rules, configured_grades, qrels_rules  # lazy: score's start-up

        if kind == "hits":
            lf = _scan_contract(p, kind)
            _collect(lf.head(1), p)  # fail early, with the file named, on a type that does not fit
            if not check_later:
                _check_hits_parquet(p)
            return lf
        if kind == "qrels":
            qrels = _collect(_scan_contract(p, kind), p)
            if qrels.height == 0:
                raise CliError(f"{p}: no judgments (an empty qrels table)")
            _check_rows(p, qrels, qrels_rules(configured_grades()))
            return qrels
        from lens_core.common.tables import read_parquet  # lazy: score's start-up

        try:
            pl.read_parquet_schema(p)
        except Exception as e:  # not a Parquet file, truncated, ...
            raise CliError(f"{p}: cannot read Parquet ({e})") from None
        agg = read_parquet(p, schema=_contract(kind))
        _check_rows(p, agg, agg_rules())
        return agg
    if kind == "hits":
        return read_trec_run(p)
    if kind == "qrels":
        return read_trec_qrels(p)
    raise CliError(f"{p}: {kind} must be a .parquet file")


def _agg_from_keys(keys: pl.DataFrame, qrels: pl.DataFrame) -> pl.DataFrame:
    """Without an agg table: every (run_id, system) of the run × every qid that has hits in
    any system or is judged (queries with no hits score 0, as trec_eval -c would)."""
    systems = keys.select("run_id", "system").unique()
    qids = pl.concat([keys.select("qid"), qrels.select("qid")]).unique()
    return systems.join(qids, how="cross").with_columns(
        pl.lit("all").alias("suite"),
        pl.lit("all").alias("intent"),
        pl.lit("all").alias("language"),
        pl.lit(None, pl.Float64).alias("lat_ms"),
        pl.lit(True).alias("within_sla"),
        pl.lit(0, pl.Int32).alias("probes"),
        pl.lit(0.0).alias("cpu_ms"),
        pl.lit(None, pl.String).alias("error"),
    )


def _agg_from_hits(hits: pl.DataFrame, qrels: pl.DataFrame) -> pl.DataFrame:
    return _agg_from_keys(hits.select("run_id", "system", "qid"), qrels)


def _first_system_ahead(path: str):
    """The first (run_id, system) of a Parquet hits file, its hits already being read
    (`hitread.read_ahead`, the file's own column types), or None (not a Parquet file, no rows,
    a column missing or unreadable, ...: the schema guard names the problem after). Started
    before `score` imports pyarrow, the contract and the metrics (~0.1 s on two cores, during
    which the second core is otherwise idle; issue 19). Nothing of it is used before the schema
    guard and the file's statistics have vouched for its system."""
    from lens_core.measures.hitread import read_ahead  # lazy: polars only, before the rest of score

    p = Path(path)
    if p.suffix != ".parquet" or not p.is_file():
        return None
    try:
        lf = pl.scan_parquet(p)
        first = lf.select("run_id", "system").head(1).collect()
        key = first.row(0) if first.height else None
        if key is None or not all(isinstance(v, str) for v in key):
            return None
        return read_ahead(lf, *key)
    except Exception:  # noqa: BLE001 - whatever it is, the schema guard names it
        return None


def cmd_score(args: argparse.Namespace) -> int:
    early = [_first_system_ahead(args.hits)]  # first: the decoding runs while the rest is imported
    from lens_core.common.contracts import PER_QUERY_SCHEMA  # lazy: score's start-up: contracts import pyarrow
    from lens_core.common.hashing import atomic_dir  # lazy: score's start-up
    from lens_core.common.tables import write_parquet  # lazy: score's start-up
    from lens_core.common.validate import output_dir_problem  # lazy: score's start-up
    from lens_core.measures.metrics import per_query_metrics  # lazy: score's start-up

    t0 = time.monotonic()
    problem = output_dir_problem(args.out)
    if problem:
        raise CliError(f"--out {problem}")
    # A Parquet hits file's whole-file check runs in a thread beside the work below (pyarrow and
    # polars release the GIL: on two cores the check costs no wall time; issue 19 speed). Nothing
    # is written before it has passed, and the refusals come in the order they did when it ran
    # between the schema guard (`_read_table`) and the rest: a schema refusal first, then the
    # check's, then any other.
    hp = Path(args.hits)
    check = _Background(_check_hits_parquet, hp) if hp.suffix == ".parquet" and hp.is_file() else None
    try:
        hits = _read_table(args.hits, "hits", check_later=True)
    except BaseException:
        if check is not None:
            check.wait()
        raise
    try:
        ranking, qrels, agg, spans, ideal = _score_ranking(args, hits, early)
    except BaseException:
        if check is not None:
            check.result()
        raise
    if check is not None:
        check.result()
    del hits
    if agg is None:
        agg = _agg_from_keys(ranking, qrels)
    pq = per_query_metrics(
        agg, None, qrels, ranking=ranking, spans=spans, measures=(), ideal=ideal
    )  # the contract's only
    out = Path(args.out)
    report = ""
    with atomic_dir(out) as stage:  # all files or none, never mixed with an earlier set (issue 18)
        write_parquet(
            pq.select([f.name for f in PER_QUERY_SCHEMA]), stage / "per_query.parquet", schema=PER_QUERY_SCHEMA
        )
        if args.no_ci:
            means = pq.group_by("system").agg(
                pl.col(m).mean() for m in ("ndcg_10", "recall_50", "sla_recall_50", "mrr_10")
            )
            report = str(means.sort("system"))
        else:
            from lens_core.measures.scoring import hero_markdown, hero_table, score  # lazy: only with CIs

            sc = score(pq, b=args.bootstrap, seed=args.seed)
            write_parquet(sc, stage / "scores.parquet")
            ht = hero_table(sc, {}, {})
            ht.write_csv(stage / "hero_span_v22.csv")
            report = hero_markdown(ht, ("ndcg_10", "recall_50", "sla_recall_50", "mrr_10"))
    print(report)
    print(
        f"scored {pq['qid'].n_unique()} queries × {pq['system'].n_unique()} system(s) in "
        f"{time.monotonic() - t0:.2f}s -> {out}\n"
        "query set averaged: the suite's (every query of --agg, or of the run and qrels; a query without "
        "hits or judgments scores 0), not trec_eval's (`lens-eval trec`: judged queries of the run)",
        file=sys.stderr,
    )
    return 0


class _Background:
    """A check run in a thread; `result()` waits for it and raises what it raised."""

    def __init__(self, fn, *args) -> None:
        import threading  # lazy: score only

        self._exc: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # handed to the main thread by result()
            self._exc = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self._thread.join()
        if self._exc is not None:
            raise self._exc


def _huge_pages_off() -> None:
    """Transparent huge pages off for the rest of the process (Linux: `prctl(PR_SET_THP_DISABLE)`)
    where `lens_cli.entry` turned them on for `score` (not where the user did): ~8% faster on
    one system's hits, they keep the earlier systems' memory across several (peak RSS 460 ->
    760-925 MB on 4-8 systems of 48,768 queries x 100 hits, against ~490-510 MB without them,
    and no faster). Pages already faulted in stay as they are; elsewhere, or if the call fails,
    nothing changes."""
    import lens_cli  # lazy: the flag entry() set

    if not lens_cli.HUGE_PAGES_OURS or not sys.platform.startswith("linux"):
        return
    import ctypes  # lazy: this call only

    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):  # no C library to load, or one without prctl: huge pages stay
        return
    prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE; a refusal (-1, an old kernel) leaves them on


def _score_ranking(args: argparse.Namespace, hits: pl.DataFrame | pl.LazyFrame, early: list | None = None):
    """The score command's inputs other than the hits, and the per-ranking columns:
    (ranking, qrels, agg or None, relevant spans, their ideal DCG). `early`: [a system's read
    started before the schema guard (`_first_system_ahead`) or None], taken out of the list
    (so no one else holds it): used once the file's statistics list its system, cast to the
    contract's types; else dropped at once, which stops it."""
    from lens_core.measures.hitread import MAX_RANK, cast_batches, read_ahead  # lazy: start-up
    from lens_core.measures.metrics import hit_metrics, ideal_dcg, relevant_spans  # lazy: start-up

    first = early.pop() if early else None
    ahead = None
    if isinstance(hits, pl.LazyFrame):  # Parquet: validated whole by cmd_score's check; pairs from statistics
        schema = hits.collect_schema()
        # read again with the rank filter below the casts, so the Parquet reader skips the rows
        # past MAX_RANK as it decodes (memory: issue 19)
        scan = (
            pl.scan_parquet(args.hits)
            .filter(pl.col("rank") <= MAX_RANK)
            .select(pl.col(c).cast(t) for c, t in schema.items())
        )
        guess = _parquet_systems(Path(args.hits))
        if not guess or len(guess) > 1:  # several systems, or not known from the statistics
            _huge_pages_off()
        if guess and first is not None and first.key in guess:  # its system first: one system's hits held at a time
            ahead = cast_batches(first, schema)
            guess = [first.key] + [k for k in guess if k != first.key]
        elif guess:  # the first system's hits decoded in the background while the qrels are read (speed: issue 19)
            ahead = read_ahead(scan, *guess[0])
    else:  # hits from a TREC run: any number of systems
        _huge_pages_off()
    del first  # used through `ahead`, or dropped here (polars stops its read)
    qrels = _read_table(args.qrels, "qrels")
    agg = _read_table(args.agg, "agg") if args.agg else None  # validated before the work, like the others
    try:
        # One system at a time: the hits of the others are not held meanwhile.
        spans = relevant_spans(qrels)
        systems = None
        if isinstance(hits, pl.LazyFrame):
            systems = _check_file(Path(args.hits), hits, guess)
            hits = scan
        # computed while the first system's hits are still being decoded (the main thread waits for
        # them otherwise; issue 19): not after the metrics, where it would add to the wall time
        ideal = ideal_dcg(spans)
        ranking = hit_metrics(hits, qrels, spans, systems=systems, ahead=ahead)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as e:
        raise CliError(f"{args.hits}: a column does not match the contract's type ({str(e).splitlines()[0]})") from None
    return ranking, qrels, agg, spans, ideal


def cmd_ingest(args: argparse.Namespace) -> int:
    """Raw-run NDJSON files -> agg.parquet + hits.parquet in --out (SPEC §3): the weekly chain's
    ingestion, validated the same way; on any refusal nothing is written."""
    from lens_core.common.validate import output_dir_problem  # lazy: ingest only
    from lens_core.ingest.ndjson import ingest_to_parquet  # lazy: ingest only (DuckDB, the C scanner)

    t0 = time.monotonic()
    out = Path(args.out)
    problem = output_dir_problem(out)
    if problem:
        raise CliError(f"--out {problem}")
    for raw in args.raw:
        if not Path(raw).is_file():
            raise CliError(f"{raw}: no such file")
    created = not out.exists()
    try:
        agg, hits = ingest_to_parquet(args.raw, out / "agg.parquet", out / "hits.parquet")
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing written: not even the folder
        raise
    print(
        f"ingested {agg.num_rows} records, {hits.rows} hits in {time.monotonic() - t0:.2f}s -> {out}", file=sys.stderr
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        from lens_core.stats.compare import compare  # lazy: compare only (scipy)
    except ImportError as e:  # pragma: no cover - packaging problem
        raise CliError(f"statistics module unavailable: {e}") from None
    from lens_core.common.settings import load_config  # lazy: score's start-up

    p = Path(args.per_query)
    if not p.is_file():
        raise CliError(f"{p}: no such file")
    pq = pl.read_parquet(p)
    for name in (args.control, args.test):
        if name not in set(pq["system"].unique().to_list()):
            raise CliError(
                f"{p}: system {name!r} not found (have: {', '.join(sorted(pq['system'].unique().to_list()))})"
            )
    from lens_core.measures.registry import extra_measures, metric_column  # lazy: compare only

    cfg = load_config()

    def metric(m: str) -> str:  # a column of the table, or a registry name (nDCG@10, SLA-R@50, P@5)
        if m in pq.columns:
            return m
        try:
            return metric_column(m, ("measures",), cfg)
        except ValueError:
            raise CliError(
                f"--metrics: unknown measure {m!r} (a per-query column of {p}, or the registry name of a "
                "configured measure: nDCG@10, SLA-R@50, ...)"
            ) from None

    extras = [m.column for m in extra_measures(cfg) if m.column in pq.columns]
    metrics = (
        [metric(m.strip()) for m in args.metrics.split(",")]
        if args.metrics
        else ["ndcg_10", "recall_50", "sla_recall_50", "mrr_10", *extras]
    )
    res = compare(
        pq,
        args.control,
        args.test,
        metrics=metrics,
        b_ci=args.bootstrap,
        b_perm=args.permutations,
        seed=args.seed if args.seed is not None else cfg.run.seed,
    )
    if args.out:
        res.write_parquet(args.out)
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=200):
        print(
            res.select(
                "slice",
                "metric",
                "delta",
                "ci_low",
                "ci_high",
                "p_value",
                "p_holm",
                *[c for c in ("n", "mde", "status") if c in res.columns],
            )
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import shutil  # lazy: verify from a bucket only
    import tempfile  # lazy: verify from a bucket only

    from lens_core.common import objectstore  # lazy: verify only
    from lens_core.publish.bundle import fetch_bundle, verify  # lazy: verify only

    if objectstore.is_url(args.bundle):  # s3://bucket/prefix/bundles/<fp>, or the data dir (its published bundle)
        tmp = Path(tempfile.mkdtemp(prefix="lens-verify-"))
        try:
            data_url = args.data_dir if objectstore.is_url(args.data_dir) else None
            try:
                b, fetched_data = fetch_bundle(args.bundle, tmp, data_url)
            except (ValueError, objectstore.ObjectStoreError) as e:
                raise CliError(str(e)) from None
            data = Path(args.data_dir) if args.data_dir and not data_url else fetched_data
            url = args.bundle.rstrip("/")
            url = url if url.endswith(f"/bundles/{b.name}") else f"{url}/bundles/{b.name}"
            where = {str(b): url, str(fetched_data): data_url or url.rsplit("/bundles/", 1)[0]}
            problems = [_replace_all(p, where) for p in verify(b, data_dir=data)]  # name the objects, not the copy
            return _report_verify(problems, b, url)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    b = Path(args.bundle)
    if not b.is_dir():
        raise CliError(f"{b}: not a bundle directory")
    if objectstore.is_url(args.data_dir):
        raise CliError(f"--data-dir {args.data_dir}: an s3:// data dir goes with an s3:// bundle")
    return _report_verify(verify(b, data_dir=Path(args.data_dir) if args.data_dir else None), b, str(b))


def _replace_all(text: str, where: dict[str, str]) -> str:
    for old, new in where.items():
        text = text.replace(old, new)
    return text


def _report_verify(problems: list[str], b: Path, name: str) -> int:
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"lens-eval: verify: {name}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_FAILED
    att = json.loads((b / "attestation.json").read_text())
    print(
        f"OK {att['fingerprint']}: {len(att['artifacts'])} artifacts re-hashed, every attested field checked, "
        "per_query, scores (CIs, latency percentiles, judged@10, file credit) and hero table re-scored, "
        "comparisons (CIs, p-values, Holm) re-run with the attested seed and B, gates re-evaluated from the "
        "bundle's data, within ±0.1 pp"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.source:
        os.environ["DATA_SOURCE"] = args.source
    if args.data_dir:
        os.environ["LENS_DATA_DIR"] = args.data_dir if "://" in args.data_dir else str(Path(args.data_dir).resolve())
    if args.allow_older:  # read by lens_core.publish.bundle.allow_older_default
        os.environ["LENS_ALLOW_OLDER"] = "1"
    from lens_core.collect.preflight import PreflightError, preflight  # lazy: `run` only (pydantic, http)

    try:  # settings, names, token and the endpoint's /health, before the job or any file
        preflight()
    except PreflightError as e:  # one line, exit 2 (config) or 1 (auth, unreachable): no gate, no page
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return e.exit_code
    from lens_core.measures.registry import check_config  # lazy: `run` only

    try:  # every measure the config names (`measures:`, each `metric:`), resolved by the registry first
        check_config()
    except ValueError as e:  # one line: the key and the file
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from lens_core.judge.qrels import QrelsError, check_human_qrels  # lazy: `run` only

    try:  # human labels are input: a bad one is refused here with its file and line, exit 2
        check_human_qrels()
    except QrelsError as e:
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from lens_assets.run import run_weekly  # lazy: the Dagster layer, for `run` only (seconds of start-up)

    partition = args.partition or latest_partition()
    print(f"lens weekly run, week {partition}: progress (the full event log is in the Dagster UI)")
    # Through the code location when there is an instance to launch on ($DAGSTER_HOME, as make demo
    # sets): the run is then listed under weekly_lens_job in the UI; in-process otherwise.
    launch = bool(os.environ.get("DAGSTER_HOME")) and not args.in_process
    result = run_weekly(partition, queries_per_suite=args.queries_per_suite, progress=True, launch=launch)
    if result.get("auth_refused"):  # refused mid-run (credentials revoked, ...): one line, no page (issue 18)
        print(f"lens-eval: error: {' '.join(result['errors'][0].split())}", file=sys.stderr)
        return EXIT_FAILED
    _print_run_summary(partition, result)
    if result.get("refused"):  # an older week: a plain refusal, not a red gate, not paged (issue 18)
        print(f"result:      NOT published: {result['refused']} (exit 3)")
    outcomes = [(result["success"], bool(result.get("blocked_by_gates")))]
    if args.with_lvm:
        from lens_assets.run import dagster_instance  # lazy: the Dagster layer, for `run` only (seconds of start-up)
        from lvm_assets.run import run_lvm  # lazy: the Dagster layer and torch, for --with-lvm only

        with dagster_instance() as instance:
            lvm = run_lvm(instance, launch=launch)
        _print_lvm_summary()
        print(
            f"lvm:         {'ok' if lvm['success'] else 'FAILED'} in {lvm['wall_s']:.1f}s; checks: "
            + ", ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in sorted(lvm["checks"].items()))
        )
        outcomes.append((lvm["success"], bool(lvm.get("blocked_by_checks"))))
    if any(not ok and not blocked for ok, blocked in outcomes):
        return EXIT_FAILED
    if any(not ok for ok, _ in outcomes):
        print("result:      a blocking gate or check is red: reported above, last green kept (exit 3)")
        return EXIT_BLOCKED
    if result.get("refused"):
        return EXIT_BLOCKED
    return 0


def _print_run_summary(partition: str, result: dict, max_hero_rows: int = 12) -> None:
    """The verdict first (the report the release_verdict asset wrote), the hero table, and where
    to look; the full tables are in files (verdict.md, gates.md, the bundle)."""
    report = Path(result["report"]).parent if result.get("report") else None
    print()
    if report is not None and (report / "summary.txt").is_file():
        print((report / "summary.txt").read_text().rstrip())
    else:  # the verdict did not run: a step failed before it
        state = "PUBLISHED" if result["published"] else "NOT PUBLISHED"
        print(f"{state} {result.get('fingerprint') or '(no bundle)'} for week {partition}: the run did not finish")
        for line in result.get("errors") or []:
            print(f"  error: {line}")
    hero = [ln for ln in (result.get("hero_markdown") or "").splitlines() if ln.strip()]
    if hero:
        print()
        print("hero table (slice all, 95% CI):")
        print("\n".join(hero[: max_hero_rows + 2]))
        if len(hero) > max_hero_rows + 2:
            print(f"… {len(hero) - max_hero_rows - 2} more systems (the bundle's tables/hero_span_v22.csv)")
    print()
    state = "PUBLISHED" if result["published"] else "NOT published (last green kept)"
    print(f"fingerprint: {result['fingerprint']}  [{state}]")
    print(f"bundle:      {result['bundle']}")
    if result.get("site"):
        print(f"site:        {result['site']}")
    if report is not None:
        print(f"verdict:     {report / 'verdict.md'}  (every gate: {report / 'gates.md'})")
    print("ui:          make ui, then http://127.0.0.1:3000/assets/release_verdict")
    print(f"wall time:   {result['wall_s']:.1f}s")


def _print_lvm_summary() -> None:
    from lens_core.common.settings import data_dir  # lazy: score's start-up

    p = data_dir() / "lvm" / "eval_scores.parquet"
    if not p.is_file():
        return
    t = pl.read_parquet(p).filter(pl.col("lane") == "all").sort("model", "k")
    print()
    print("| model | Hit@1 | Hit@5 | Hit@10 | p95 ms | candidates |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, part in t.group_by("model", maintain_order=True):
        cells = {r["k"]: f"{r['hit']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for r in part.iter_rows(named=True)}
        first = part.row(0, named=True)
        print(
            f"| {model[0]} | {cells.get(1, '–')} | {cells.get(5, '–')} | {cells.get(10, '–')} | "
            f"{first['p95_ms']:.2f} | {first['n_candidates']} |"
        )


_LIGHT_COMMANDS = ("score", "ingest", "trec")  # parsed without the plug-in command groups' imports


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; `only="score"` (or "ingest") builds just score and ingest (no plug-in
    imports: those paths stay light, and refusing a bad input stays cheap)."""
    p = argparse.ArgumentParser(prog="lens-eval", description="Attested Lens evaluation from the command line.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="SPEC §4 metrics per query and aggregated with CIs")
    s.add_argument("--hits", required=True, help="hits.parquet, or a TREC run whose docno is repo:path:start-end")
    s.add_argument("--qrels", required=True, help="qrels.parquet, or TREC qrels with span docnos")
    s.add_argument("--agg", help="agg.parquet (latency, SLA, failures); optional")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-ci", action="store_true", help="means only, no bootstrap")
    s.set_defaults(func=cmd_score)
    i = sub.add_parser("ingest", help="SPEC §3 raw-run NDJSON files -> agg.parquet + hits.parquet (validated)")
    i.add_argument("raw", nargs="+", help="raw-run NDJSON files (runs/<env>/<run_id>/<system>.ndjson)")
    i.add_argument("--out", required=True, help="output directory")
    i.set_defaults(func=cmd_ingest)
    if only in (None, "trec"):
        from lens_cli.trec import register as register_trec  # lazy: the trec_eval-compatible command only

        register_trec(sub)  # lens-eval trec [-q] [-c] [-l N] [-M N] [-m MEASURE]... QRELS RUN
    if only in _LIGHT_COMMANDS:
        return p

    c = sub.add_parser("compare", help="SPEC §5 paired deltas, CIs, randomisation p, Holm")
    c.add_argument("--per-query", required=True)
    c.add_argument("--control", required=True)
    c.add_argument("--test", required=True)
    c.add_argument(
        "--metrics",
        help="comma-separated metrics: columns or registry names, nDCG@10, SLA-R@50 "
        "(default: ndcg_10,recall_50,sla_recall_50,mrr_10 and the configured extra measures)",
    )
    c.add_argument("--bootstrap", type=int, default=2000)
    c.add_argument("--permutations", type=int, default=10000)
    c.add_argument("--seed", type=int)
    c.add_argument("--out", help="write the comparisons table as Parquet")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("verify", help="re-hash a bundle and re-score its hero table (exit 0 only when it holds)")
    v.add_argument(
        "bundle",
        help="a bundle directory, or s3://bucket/prefix/bundles/<fp> (s3://bucket/prefix: its published bundle)",
    )
    v.add_argument("--data-dir", help="where runs/ lives, a directory or s3:// URL (default: the bundle's data dir)")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser(
        "run",
        help="the weekly chain for one partition, in-process (what make demo calls); "
        "exit 0 published, 3 a blocking gate refused publication, 1 an error",
    )
    r.add_argument("--source", choices=["sim", "local", "prod"], help="data source (default $DATA_SOURCE or sim)")
    r.add_argument("--partition", help="weekly partition key YYYY-MM-DD (default: the last complete week)")
    r.add_argument("--data-dir", help="LENS_DATA_DIR: a directory or s3://bucket/prefix (default ./data)")
    r.add_argument("--queries-per-suite", type=int, default=0, help="simulator queries per suite (0 = config)")
    r.add_argument("--with-lvm", action="store_true", help="also materialise the LVM group (make demo does)")
    r.add_argument(
        "--allow-older",
        action="store_true",
        help="publish even when the partition is older than the published one (default: kept unpublished)",
    )
    r.add_argument(
        "--in-process",
        action="store_true",
        help="execute in this process instead of launching through the code location on $DAGSTER_HOME",
    )
    r.set_defaults(func=cmd_run)

    try:
        from lens_cli.lvm import register as register_lvm  # lazy: torch, imported by `lvm` subcommands only
    except ImportError:
        register_lvm = None
    if register_lvm is not None:
        register_lvm(sub)
    from lens_cli.judge import register as register_judge  # lazy: judge only
    from lens_cli.site import register as register_site  # lazy: the site's renderer, for `site` only

    register_site(sub)  # lens-eval site BUNDLE [--out DIR] [--lvm-dir DIR] [--publish]
    register_judge(sub)  # lens-eval judge export|import
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=argv[0] if argv[:1] and argv[0] in _LIGHT_COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError, PermissionError) as e:
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # the system refused (disk full, a folder where a file was expected): one line
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lens-eval: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """Every command but `trec` (`lens_cli.entry`): `main`, then exit. Everything is written by then, so the objects
    left are frozen out of the interpreter's final garbage collections, which would otherwise
    walk every object of polars, pyarrow and numpy (~50 ms of each command's wall time)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
