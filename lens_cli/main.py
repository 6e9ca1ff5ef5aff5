"""`lens-eval`: results without the UI (SPEC §14).

  lens-eval score   --hits H --qrels Q [--agg A] --out DIR   metrics per query + CIs
  lens-eval compare --per-query P --control C --test T       deltas, CIs, Holm
  lens-eval verify  BUNDLE                                   re-hash and re-score a bundle
  lens-eval run     [--source sim|local|prod]                the weekly chain, in-process
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


def _whitespace_table(path: Path, names: list[str]) -> pl.DataFrame:
    lines = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",
        new_columns=["line"],
        quote_char=None,
        schema_overrides={"line": pl.String},
    )
    lines = lines.with_row_index("lineno", offset=1).filter(pl.col("line").str.strip_chars() != "")
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
    return ext.with_columns(pl.col("start_line", "end_line").cast(pl.Int32))


def read_trec_run(path: Path) -> pl.DataFrame:
    """TREC run `qid Q0 repo:path:start-end rank score tag` -> hits (rank re-derived by score)."""
    t = _split_docno(_whitespace_table(path, ["qid", "q0", "docno", "rank", "score", "system"]), path)
    t = t.with_columns(pl.col("score").cast(pl.Float64, strict=False))
    if t["score"].null_count():
        r = t.filter(pl.col("score").is_null()).row(0, named=True)
        raise CliError(f"{path}:{r['lineno']}: score is not a number")
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
    t = _split_docno(_whitespace_table(path, ["qid", "iter", "docno", "rel"]), path)
    t = t.with_columns(pl.col("rel").cast(pl.Int32, strict=False))
    if t["rel"].null_count():
        r = t.filter(pl.col("rel").is_null()).row(0, named=True)
        raise CliError(f"{path}:{r['lineno']}: rel is not an integer")
    return t.with_columns(pl.lit("trec").alias("source")).select(
        "qid", "repo", "path", "start_line", "end_line", "rel", "source"
    )


# Columns the score command reads; the rest of the contract must exist but is not loaded.
_SCORE_COLUMNS = {
    "hits": ("run_id", "system", "qid", "rank", "repo", "path", "start_line", "end_line", "in_sla"),
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
    want = {f.name: _polars_type(f.type) for f in schema if f.name in _SCORE_COLUMNS[kind]}
    cols = [pl.col(c) if have[c] == t else pl.col(c).cast(t, strict=True) for c, t in want.items()]
    return pl.scan_parquet(p).select(cols)


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


def _read_table(path: str, kind: str) -> pl.DataFrame | pl.LazyFrame:
    """hits: a LazyFrame for Parquet (read one system at a time by the metrics), a
    DataFrame for a TREC run; qrels and agg: DataFrames."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{p}: no such file")
    if p.suffix == ".parquet":
        if kind == "hits":
            lf = _scan_contract(p, kind)
            _collect(lf.head(1), p)  # fail early, with the file named, on a type that does not fit
            return lf
        if kind == "qrels":
            return _collect(_scan_contract(p, kind), p)
        from lens_core.common.tables import read_parquet  # lazy: score's start-up

        return read_parquet(p, schema=_contract(kind))
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


def cmd_score(args: argparse.Namespace) -> int:
    from lens_core.common.contracts import PER_QUERY_SCHEMA  # lazy: score's start-up: contracts import pyarrow
    from lens_core.common.tables import write_parquet  # lazy: score's start-up
    from lens_core.measures.metrics import hit_metrics, per_query_metrics, relevant_spans  # lazy: score's start-up

    t0 = time.monotonic()
    hits = _read_table(args.hits, "hits")
    qrels = _read_table(args.qrels, "qrels")
    try:
        # One system at a time: the hits of the others are not held meanwhile.
        spans = relevant_spans(qrels)
        systems = _parquet_systems(Path(args.hits)) if isinstance(hits, pl.LazyFrame) else None
        ranking = hit_metrics(hits, qrels, spans, systems=systems)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as e:
        raise CliError(f"{args.hits}: a column does not match the contract's type ({str(e).splitlines()[0]})") from None
    del hits
    agg = _read_table(args.agg, "agg") if args.agg else _agg_from_keys(ranking, qrels)
    pq = per_query_metrics(agg, None, qrels, ranking=ranking, spans=spans)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(pq.select([f.name for f in PER_QUERY_SCHEMA]), out / "per_query.parquet", schema=PER_QUERY_SCHEMA)
    if args.no_ci:
        means = pq.group_by("system").agg(pl.col(m).mean() for m in ("ndcg_10", "recall_50", "sla_recall_50", "mrr_10"))
        print(means.sort("system"))
    else:
        from lens_core.measures.scoring import hero_markdown, hero_table, score  # lazy: only with CIs

        sc = score(pq, b=args.bootstrap, seed=args.seed)
        write_parquet(sc, out / "scores.parquet")
        ht = hero_table(sc, {}, {})
        ht.write_csv(out / "hero_span_v22.csv")
        print(hero_markdown(ht, ("ndcg_10", "recall_50", "sla_recall_50", "mrr_10")))
    print(
        f"scored {pq['qid'].n_unique()} queries × {pq['system'].n_unique()} system(s) in "
        f"{time.monotonic() - t0:.2f}s -> {out}",
        file=sys.stderr,
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
    cfg = load_config()
    metrics = args.metrics.split(",") if args.metrics else ["ndcg_10", "recall_50", "sla_recall_50", "mrr_10"]
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
    from lens_core.publish.bundle import verify  # lazy: verify only

    b = Path(args.bundle)
    if not b.is_dir():
        raise CliError(f"{b}: not a bundle directory")
    problems = verify(b, data_dir=Path(args.data_dir) if args.data_dir else None)
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"lens-eval: verify: {b}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_FAILED
    att = json.loads((b / "attestation.json").read_text())
    print(f"OK {att['fingerprint']}: {len(att['artifacts'])} artifacts re-hashed, hero table re-scored within ±0.1 pp")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.source:
        os.environ["DATA_SOURCE"] = args.source
    if args.data_dir:
        os.environ["LENS_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from lens_assets.run import run_weekly  # lazy: the Dagster layer, for `run` only (seconds of start-up)

    partition = args.partition or latest_partition()
    result = run_weekly(partition, queries_per_suite=args.queries_per_suite, progress=True)
    print()
    print(result["hero_markdown"])
    print()
    print(result["gates_markdown"])
    print()
    state = "PUBLISHED" if result["published"] else "NOT published (blocking gate failed; last green kept)"
    print(f"fingerprint: {result['fingerprint']}  [{state}]")
    print(f"bundle:      {result['bundle']}")
    if result.get("site"):
        print(f"site:        {result['site']}")
    print(f"wall time:   {result['wall_s']:.1f}s")
    outcomes = [(result["success"], bool(result.get("blocked_by_gates")))]
    if args.with_lvm:
        from lens_assets.run import dagster_instance  # lazy: the Dagster layer, for `run` only (seconds of start-up)
        from lvm_assets.run import run_lvm  # lazy: the Dagster layer and torch, for --with-lvm only

        with dagster_instance() as instance:
            lvm = run_lvm(instance)
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
    return 0


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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; `only="score"` builds just that subcommand (no plug-in imports: the
    score path stays light)."""
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
    if only == "score":
        return p

    c = sub.add_parser("compare", help="SPEC §5 paired deltas, CIs, randomisation p, Holm")
    c.add_argument("--per-query", required=True)
    c.add_argument("--control", required=True)
    c.add_argument("--test", required=True)
    c.add_argument("--metrics", help="comma-separated metrics (default: ndcg_10,recall_50,sla_recall_50,mrr_10)")
    c.add_argument("--bootstrap", type=int, default=2000)
    c.add_argument("--permutations", type=int, default=10000)
    c.add_argument("--seed", type=int)
    c.add_argument("--out", help="write the comparisons table as Parquet")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("verify", help="re-hash a bundle and re-score its hero table (exit 0 only when it holds)")
    v.add_argument("bundle")
    v.add_argument("--data-dir", help="where runs/ lives (default: the bundle's data dir)")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser(
        "run",
        help="the weekly chain for one partition, in-process (what make demo calls); "
        "exit 0 published, 3 a blocking gate refused publication, 1 an error",
    )
    r.add_argument("--source", choices=["sim", "local", "prod"], help="data source (default $DATA_SOURCE or sim)")
    r.add_argument("--partition", help="weekly partition key YYYY-MM-DD (default: the last complete week)")
    r.add_argument("--data-dir", help="LENS_DATA_DIR (default ./data)")
    r.add_argument("--queries-per-suite", type=int, default=0, help="simulator queries per suite (0 = config)")
    r.add_argument("--with-lvm", action="store_true", help="also materialise the LVM group (make demo does)")
    r.set_defaults(func=cmd_run)

    try:
        from lens_cli.lvm import register as register_lvm  # lazy: torch, imported by `lvm` subcommands only
    except ImportError:
        register_lvm = None
    if register_lvm is not None:
        register_lvm(sub)
    from lens_cli.site import register as register_site  # lazy: the site's renderer, for `site` only

    register_site(sub)  # lens-eval site BUNDLE [--out DIR] [--lvm-dir DIR] [--publish]
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only="score" if argv[:1] == ["score"] else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError, PermissionError) as e:
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lens-eval: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script: `main`, then exit. Everything is written by then, so the objects
    left are frozen out of the interpreter's final garbage collections, which would otherwise
    walk every object of polars, pyarrow and numpy (~50 ms of each command's wall time)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
