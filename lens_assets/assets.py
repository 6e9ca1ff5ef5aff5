"""The weekly Lens evaluation chain as assets (thin: every step calls lens_core).

query_suites/ground_truth -> raw_runs (NDJSON) -> agg + hits -> pool -> qrels + pool_counts
-> per_query -> scores -> hero_table -> release_bundle (attestation.json, published.json)
"""


import shutil
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl
import pyarrow.parquet as pq

from lens_assets.metadata import markdown_table, table_metadata
from lens_core import contracts
from lens_core.bundle import assemble
from lens_core.gates import gate_table_markdown
from lens_core.ingest import ingest_to_parquet
from lens_core.judging import build_pool, judge, pool_counts
from lens_core.metrics import per_query_metrics
from lens_core.rawruns import raw_run_path, write_raw_run
from lens_core.scoring import hero_markdown, score
from lens_core.scoring import hero_table as build_hero_table
from lens_core.settings import data_dir, full_grids, load_config
from lens_core.systems import all_systems
from resources.data_source import LensDataSource
from resources.io_manager import staging_table_path

GROUP = "lens"
OWNERS_EVAL = ["team:search-eval"]
OWNERS_CORE = ["team:search-core"]
TZ = "US/Eastern"

weekly_partitions = dg.WeeklyPartitionsDefinition(start_date="2026-01-04", timezone=TZ, day_offset=0,
                                                  hour_offset=2, end_offset=1)


def run_id_for(partition_key: str) -> str:
    return f"w{partition_key}"


def partition_t0_ms(partition_key: str) -> float:
    """Epoch ms of the partition's Sunday 02:00 US/Eastern (the weekly run's start)."""
    d = datetime.strptime(partition_key[:10], "%Y-%m-%d").replace(hour=2, tzinfo=ZoneInfo(TZ))
    return d.timestamp() * 1000.0


FULL_GRIDS_TAG = "lens/full_grids"


def current_systems(context=None):
    """The systems of this run: the demo subset, or the full SPEC §8 grids when LENS_FULL_GRIDS=1
    or the run carries the tag `lens/full_grids=1` (the weekly schedule sets it). Every step of a
    run reads the same tag, so they agree."""
    tagged = context is not None and context.run.tags.get(FULL_GRIDS_TAG) == "1"
    return all_systems(full_grid=full_grids() or tagged)


@dg.multi_asset(
    outs={
        "query_suites": dg.AssetOut(
            description="The query suites of the run: qid, text, suite, intent, language.",
            owners=OWNERS_EVAL, kinds={"polars", "parquet"}, group_name=GROUP),
        "ground_truth": dg.AssetOut(
            description="Ground-truth relevant spans per query (what the judge labels from).",
            owners=OWNERS_EVAL, kinds={"polars", "parquet"}, group_name=GROUP),
    },
    partitions_def=weekly_partitions,    deps=["engine_index"],
)
def query_suites(context: dg.AssetExecutionContext, lens_source: LensDataSource):
    queries, gt = lens_source.suites()
    counts = queries.group_by("suite", "intent").len().sort("suite", "intent")
    yield dg.Output(queries, output_name="query_suites", metadata=table_metadata(
        queries, contracts.QUERIES_SCHEMA, headline=markdown_table(counts), preview=queries.head(10),
        source=lens_source.resolved_source()))
    yield dg.Output(gt, output_name="ground_truth", metadata=table_metadata(
        gt, contracts.GROUND_TRUTH_SCHEMA, preview=gt.head(10)))


@dg.asset(
    description="Raw runs: every system's answers to every query, one NDJSON record per query under "
                "$LENS_DATA_DIR/runs/<env>/<run_id>/<system>.ndjson (atomic, sha256 recorded). "
                "The table is the manifest of the files.",
    owners=OWNERS_CORE, kinds={"ndjson", "python"}, group_name=GROUP, partitions_def=weekly_partitions,
)
def raw_runs(context: dg.AssetExecutionContext, lens_source: LensDataSource, query_suites: pl.DataFrame) -> pl.DataFrame:
    cfg = load_config()
    pk = context.partition_key
    run_id = run_id_for(pk)
    env = cfg.run.env if lens_source.resolved_source() != "prod" else "prod"
    root = data_dir()
    rows = []
    systems = current_systems(context)
    for i, system in enumerate(systems, start=1):
        t = time.monotonic()
        records = lens_source.collect(system, query_suites, run_id, partition_t0_ms(pk), cfg.run.k)
        info = write_raw_run(raw_run_path(root, env, run_id, system.name), records)
        errors = sum(1 for r in records if r["error"])
        rows.append((system.name, system.pack, system.cfg_hash, str(raw_run_path(root, env, run_id, system.name).relative_to(root)),
                     info["sha256"], info["records"], errors))
        context.log.info(f"[{i}/{len(systems)}] {system.name}: {info['records']} queries, {errors} errors, "
                         f"{time.monotonic() - t:.1f}s")
    manifest = pl.DataFrame(rows, schema=["system", "pack", "cfg_hash", "path", "sha256", "records", "errors"], orient="row")
    context.add_output_metadata(table_metadata(
        manifest, headline=markdown_table(manifest.select("system", "records", "errors")), run_id=run_id, env=env,
        data_source=dg.MetadataValue.json(lens_source.describe())))
    return manifest


@dg.multi_asset(
    outs={
        "agg": dg.AssetOut(description="One row per (run_id, system, qid): latency, SLA, shards, cost, why-mix, "
                                       "attestation_sha256 of the raw file (SPEC §3).",
                           owners=OWNERS_EVAL, kinds={"polars", "parquet"}, group_name=GROUP),
        "hits": dg.AssetOut(description="One row per returned hit with span, score, why flags, shard, in_sla.",
                            owners=OWNERS_EVAL, kinds={"polars", "parquet"}, group_name=GROUP),
    },
    partitions_def=weekly_partitions,
)
def agg_and_hits(context: dg.AssetExecutionContext, raw_runs: pl.DataFrame):
    root = data_dir()
    # hits are written while the raw files are still being verified, into a scratch file that
    # the IO manager then moves into place (lens_core.ingest.ingest_to_parquet)
    scratch = root / "staging" / ".ingest" / context.run_id
    try:
        yield from _agg_and_hits(context, [root / p for p in raw_runs["path"].to_list()], scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _agg_and_hits(context: dg.AssetExecutionContext, raw_paths: list[Path], scratch: Path):
    raw_runs_n = len(raw_paths)
    agg_t, hits_file = ingest_to_parquet(raw_paths, None, scratch / "hits.parquet")
    agg = pl.from_arrow(agg_t)
    preview = pl.from_arrow(next(pq.ParquetFile(hits_file.path).iter_batches(batch_size=8), None)
                            or contracts.HITS_SCHEMA.empty_table())
    summary = agg.group_by("system").agg(
        pl.len().alias("queries"), pl.col("error").is_not_null().sum().alias("errors"),
        pl.col("within_sla").mean().alias("within_sla"), pl.col("lat_ms").quantile(0.95).alias("p95_ms"),
        pl.col("why_mix_sem").mean().alias("why_sem")).sort("system")
    yield dg.Output(agg, output_name="agg", metadata=table_metadata(
        agg, contracts.AGG_SCHEMA, headline=markdown_table(summary), files_ingested=raw_runs_n))
    yield dg.Output(hits_file, output_name="hits", metadata=table_metadata(
        preview, contracts.HITS_SCHEMA, preview=preview, **{"dagster/row_count": hits_file.rows}))


@dg.asset(
    description="The judging pool: the union over systems of each system's in-SLA top-50 hits (SPEC §3).",
    owners=OWNERS_EVAL, kinds={"polars", "parquet"}, group_name=GROUP, partitions_def=weekly_partitions,
)
def pool(context: dg.AssetExecutionContext, hits: pl.DataFrame) -> pl.DataFrame:
    p = build_pool(hits, depth=load_config().run.pool_depth)
    context.add_output_metadata(table_metadata(p, contracts.POOL_SCHEMA, preview=p.head(8),
                                               queries=p["qid"].n_unique()))
    return p


@dg.multi_asset(
    outs={
        "qrels": dg.AssetOut(description="Relevance labels: ground-truth spans and judged pool members (SPEC §3, §11).",
                             owners=OWNERS_EVAL, kinds={"polars", "parquet"}, group_name=GROUP),
        "pool_counts": dg.AssetOut(description="pool_counts_by_system: contributed, unique_contributed, judged_share.",
                                   owners=OWNERS_EVAL, kinds={"polars", "csv"}, group_name=GROUP),
    },
    partitions_def=weekly_partitions,
)
def qrels_and_pool_counts(context: dg.AssetExecutionContext, pool: pl.DataFrame, ground_truth: pl.DataFrame):
    q = judge(pool, ground_truth)
    pc = pool_counts(pool, q)
    by_source = q.group_by("source", "rel").len().sort("source", "rel")
    yield dg.Output(q, output_name="qrels", metadata=table_metadata(q, contracts.QRELS_SCHEMA, headline=markdown_table(by_source)))
    yield dg.Output(pc, output_name="pool_counts", metadata=table_metadata(pc, headline=markdown_table(pc)))


@dg.asset(
    description="Per-query metrics (SPEC §4, span-only credit): nDCG@10, Recall@50, SLA-Recall@50, MRR@10, "
                "Success@1/5/10, plus judged@10 and file-credit diagnostics. Failed queries score 0.",
    owners=OWNERS_EVAL, kinds={"polars", "parquet"}, group_name=GROUP, partitions_def=weekly_partitions,
)
def per_query(context: dg.AssetExecutionContext, agg: pl.DataFrame, hits: pl.DataFrame, qrels: pl.DataFrame,
              query_suites: pl.DataFrame) -> pl.DataFrame:
    pq = per_query_metrics(agg, hits, qrels, queries=query_suites)
    means = pq.group_by("system").agg([pl.col(m).mean() for m in contracts.PER_QUERY_METRICS] + [pl.col("failed").sum()]).sort("system")
    context.add_output_metadata(table_metadata(pq, headline=markdown_table(means)))
    return pq


@dg.asset(
    description="Scores: every system × slice × metric with a paired percentile bootstrap CI over queries "
                "(B >= 2000, seeded) — SPEC §5.",
    owners=OWNERS_EVAL, kinds={"polars", "parquet", "numpy"}, group_name=GROUP, partitions_def=weekly_partitions,
)
def scores(context: dg.AssetExecutionContext, per_query: pl.DataFrame) -> pl.DataFrame:
    cfg = load_config()
    s = score(per_query, b=max(2000, cfg.run.bootstrap_b), seed=cfg.run.seed, alpha=cfg.run.alpha)
    head = s.filter((pl.col("slice") == "all") & (pl.col("metric") == "ndcg_10")).select("system", "mean", "ci_low", "ci_high", "n")
    context.add_output_metadata(table_metadata(s, contracts.SCORES_SCHEMA, headline=markdown_table(head),
                                               bootstrap_b=max(2000, cfg.run.bootstrap_b), seed=cfg.run.seed))
    return s


@dg.asset(
    description="hero_span_v22: per system, each headline metric with its 95% CI (slice `all`).",
    owners=OWNERS_EVAL, kinds={"polars", "csv"}, group_name=GROUP, partitions_def=weekly_partitions,
)
def hero_table(context: dg.AssetExecutionContext, scores: pl.DataFrame) -> pl.DataFrame:
    systems = current_systems(context)
    t = hero_table_df(scores, systems)
    context.add_output_metadata(table_metadata(t, headline=hero_markdown(t)))
    return t


def hero_table_df(scores_df: pl.DataFrame, systems) -> pl.DataFrame:
    return build_hero_table(scores_df, {s.name: s.cfg_hash for s in systems}, {s.name: s.pack for s in systems})


@dg.asset(
    description="The release bundle of SPEC §10: tables copied into bundles/<fingerprint>/, attestation.json "
                "(sha256 of every artifact, cfg hashes, versions, data source, every gate, each pack's hero and "
                "the config lock) and published.json, which moves only when every blocking gate is green.",
    owners=OWNERS_EVAL, kinds={"json"}, group_name=GROUP, partitions_def=weekly_partitions,
    deps=["agg", "hits", "pool", "qrels", "ground_truth", "calibration", "calibration_parity", "promotion_rules"],
)
def release_bundle(context: dg.AssetExecutionContext, lens_source: LensDataSource, raw_runs: pl.DataFrame,
                   hero_table: pl.DataFrame, pool_counts: pl.DataFrame, gate_summary: pl.DataFrame,
                   heroes: pl.DataFrame, comparisons: pl.DataFrame, per_query: pl.DataFrame,
                   scores: pl.DataFrame, canary_steps: pl.DataFrame, canary_windows: pl.DataFrame,
                   canary_decisions: pl.DataFrame) -> dg.MaterializeResult:
    from lens_assets.decisions import calibration_dir, frame_gates

    pk = context.partition_key
    root = data_dir()
    stage = root / "staging" / f".bundle-{pk}"
    stage.mkdir(parents=True, exist_ok=True)
    csvs = {"hero_table": (hero_table, "hero_span_v22.csv"),
            "pool_counts": (pool_counts.select(list(contracts.POOL_COUNTS_COLUMNS)), "pool_counts_by_system.csv"),
            "tables/gates.csv": (gate_summary, "gates.csv"), "tables/heroes.csv": (heroes, "heroes.csv"),
            "tables/canary_steps.csv": (canary_steps, "canary_steps.csv"),
            "tables/canary_windows.csv": (canary_windows, "canary_windows.csv"),
            "tables/canary_decisions.csv": (canary_decisions, "canary_decisions.csv")}
    files: dict[str, Path] = {}
    for key, (df, name) in csvs.items():
        df.write_csv(stage / name)
        files[key] = stage / name
    for name in ("agg", "hits", "pool", "qrels", "per_query", "scores", "comparisons"):
        files[name] = Path(staging_table_path(name, pk).path)
    files["queries.parquet"] = Path(staging_table_path("query_suites", pk).path)
    files["tables/promotion_rules.parquet"] = Path(staging_table_path("promotion_rules", pk).path)
    systems = current_systems(context)
    gates = frame_gates(gate_summary)
    lock = {r["pack"]: {"hero": r["hero"], "cfg_hash": r["cfg_hash"], "calibration_version": r["calibration_version"],
                        "reason": r["reason"]} for r in heroes.iter_rows(named=True)}
    result = assemble(
        root, files, raw_runs.select("path", "sha256").to_dicts(),
        {s.name: s.cfg_hash for s in systems}, gates, lens_source.describe(),
        extra={"run_id": run_id_for(pk), "partition": pk, "heroes": lock,
               "systems": {s.name: {"pack": s.pack, **s.knobs()} for s in systems}},
        extra_dirs={"calibration": calibration_dir(pk)},
    )
    if not result.published:
        context.log.warning(f"bundle {result.fingerprint} NOT published: blocking gate(s) failed: "
                            f"{', '.join(result.failed_blocking)}; last green stays {result.previous_published}")
    size = sum(p.stat().st_size for p in result.path.rglob("*") if p.is_file())
    from lens_core.site import build_site, publish_site

    lvm_dir = root / "lvm"
    site = build_site(result.path, lvm_dir=lvm_dir if lvm_dir.is_dir() else None)
    served = publish_site(root, lvm_dir=lvm_dir if lvm_dir.is_dir() else None) if result.published else None
    return dg.MaterializeResult(metadata={
        "fingerprint": result.fingerprint,
        "bundle": dg.MetadataValue.path(str(result.path)),
        "published": result.published,
        "bundle_bytes": size,
        "gates": dg.MetadataValue.md(gate_table_markdown(gates)),
        "hero_table": dg.MetadataValue.md(hero_markdown(hero_table)),
        "heroes": dg.MetadataValue.md(markdown_table(heroes)),
        "failed_blocking": ", ".join(result.failed_blocking) or "none",
        "site": dg.MetadataValue.path(str(site)),
        "served_site": dg.MetadataValue.path(str(served)) if served else "not published",
    })


lens_assets = [query_suites, raw_runs, agg_and_hits, pool, qrels_and_pool_counts, per_query, scores,
               hero_table, release_bundle]
