"""The weekly Lens evaluation chain as assets (thin: every step calls lens_core).

query_suites/ground_truth -> raw_runs (NDJSON) -> agg + hits -> pool -> qrels + pool_counts
-> per_query -> scores -> hero_table -> release_bundle (attestation.json, published.json)
(raw_runs and agg + hits, fanned out per system: lens_assets.collection)
"""

import dagster as dg
import polars as pl

from lens_assets.collection import agg_and_hits, raw_runs
from lens_assets.common import GROUP, OWNERS_EVAL, current_systems, weekly_partitions
from lens_assets.metadata import ci_whiskers_markdown, markdown_table, table_metadata
from lens_core.common import contracts
from lens_core.common.settings import data_dir, judging_dir, judgments_dir, label_policy, load_config, qrels_setting
from lens_core.common.tables import ParquetFile, write_parquet_parts
from lens_core.judge.judging import (
    SPAN_KEYS,
    build_pool_indexed,
    judge,
    judged_flags,
    name_systems,
    pool_counts,
    pool_slices,
    unjudged_share,
)
from lens_core.judge.qrels import human_qrels_paths, known_qids, qrels_manifest, read_qrels_files
from lens_core.judge.queue import export_queue, span_reader
from lens_core.judge.queue import judging_queue as judging_queue_frame
from lens_core.measures.headline import headline_figures
from lens_core.measures.metrics import per_query_metrics
from lens_core.measures.scoring import hero_markdown, score
from lens_core.measures.scoring import hero_table as build_hero_table
from resources.data_source import LensDataSource
from resources.launch import weekly_run_guard


@dg.multi_asset(
    outs={
        "query_suites": dg.AssetOut(
            description="The query suites of the run: qid, text, suite, intent, language.",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
        "ground_truth": dg.AssetOut(
            description="Ground-truth relevant spans per query (what the judge labels from).",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
    },
    partitions_def=weekly_partitions,
    deps=["engine_index"],
)
def query_suites(context: dg.AssetExecutionContext, lens_source: LensDataSource):
    weekly_run_guard(context, lens_source.source)  # pre-flight + the partition's lease, for every launch (issue 18)
    queries, gt = lens_source.suites()
    counts = queries.group_by("suite", "intent").len().sort("suite", "intent")
    yield dg.Output(
        queries,
        output_name="query_suites",
        metadata=table_metadata(
            queries,
            contracts.QUERIES_SCHEMA,
            headline=markdown_table(counts),
            preview=queries.head(10),
            source=lens_source.resolved_source(),
        ),
    )
    yield dg.Output(
        gt, output_name="ground_truth", metadata=table_metadata(gt, contracts.GROUND_TRUTH_SCHEMA, preview=gt.head(10))
    )


@dg.asset(
    description="The judging pool: the union over systems of each system's in-SLA top-50 hits (SPEC §3).",
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
)
def pool(context: dg.AssetExecutionContext, hits: pl.LazyFrame) -> ParquetFile:
    p, systems = build_pool_indexed(hits, depth=load_config().run.pool_depth)
    scratch = data_dir() / "staging" / ".pool"
    scratch.mkdir(parents=True, exist_ok=True)
    # written a slice at a time: the systems' names never exist for the whole pool at once (issue
    # 22); the IO manager moves the file into place
    out = write_parquet_parts(
        (("pool", s) for s in pool_slices(p, systems)), scratch / f"{context.run_id}.parquet", contracts.POOL_SCHEMA
    )
    context.add_output_metadata(
        table_metadata(
            p,
            contracts.POOL_SCHEMA,
            preview=name_systems(p.head(8), systems),
            queries=p["qid"].n_unique(),
            systems=len(systems),
        )
    )
    return out


@dg.multi_asset(
    outs={
        "qrels": dg.AssetOut(
            description="Relevance labels: ground-truth spans and judged pool members (SPEC §3, §11).",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
        "pool_counts": dg.AssetOut(
            description="pool_counts_by_system: contributed, unique_contributed, judged_share.",
            owners=OWNERS_EVAL,
            kinds={"polars", "csv"},
            group_name=GROUP,
        ),
    },
    partitions_def=weekly_partitions,
)
def qrels_and_pool_counts(
    context: dg.AssetExecutionContext,
    lens_source: LensDataSource,
    pool: pl.LazyFrame,  # read without its `systems` lists but where counted (issue 22)
    ground_truth: pl.DataFrame,
    query_suites: pl.DataFrame,
):
    cfg = load_config()
    pool = pool.select(*SPAN_KEYS, pl.col("systems").cast(pl.List(pl.Categorical))).collect(engine="streaming")
    systems = pool.get_column("systems")
    pool = pool.drop("systems")
    policy = label_policy(lens_source.resolved_source())
    files = human_qrels_paths(qrels_setting(), judgments_dir())
    human, unknown = known_qids(read_qrels_files(files, cfg.judging.grades), query_suites)
    if unknown:
        context.log.warning(
            f"{len(unknown)} qid(s) of the human qrels are not in this week's suites and are ignored "
            f"(as trec_eval ignores them): {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}"
        )
    q = judge(pool, ground_truth, human, policy=policy)
    judged = judged_flags(pool, q)
    pc = pool_counts(pool.with_columns(systems), q, judged=judged)
    del systems
    by_source = q.group_by("source", "rel").len().sort("source", "rel")
    yield dg.Output(
        q,
        output_name="qrels",
        metadata=table_metadata(
            q,
            contracts.QRELS_SCHEMA,
            headline=markdown_table(by_source),
            label_policy=policy,
            human_qrels_files=dg.MetadataValue.json(qrels_manifest(files)),
            human_labels=human.height,
            unknown_qids=len(unknown),
            unknown_qid_list=", ".join(unknown[:50]) or "none",
            pool_members=pool.height,
            pool_members_judged=int(judged.sum()),
        ),
    )
    yield dg.Output(pc, output_name="pool_counts", metadata=table_metadata(pc, headline=markdown_table(pc)))


@dg.asset(
    description="The judging queue (SPEC §3, issue 16): the pool members nobody has labelled, in TREC pooling "
    "order (best rank across systems first, then how many systems retrieved it; at most "
    "`judging.queue_cap_per_query` per query), with the query and the span's code where the source is "
    "readable. Also written as Label Studio tasks with their labelling config under "
    "`$LENS_DATA_DIR/judging/PARTITION/`; `lens-eval judge import` brings the annotations back.",
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet", "json"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
)
def judging_queue(
    context: dg.AssetExecutionContext,
    lens_source: LensDataSource,
    pool: pl.LazyFrame,  # its `systems` lists read as their lengths only (issue 22)
    qrels: pl.DataFrame,
    query_suites: pl.DataFrame,
) -> pl.DataFrame:
    cfg = load_config()
    pool = pool.select(*SPAN_KEYS, "best_rank", pl.col("systems").list.len().alias("n_systems")).collect(
        engine="streaming"
    )
    judged = judged_flags(pool, qrels)
    roots = lens_source.source_roots()
    # the members nobody judged (pool spans are unique per query: filtering them is the
    # anti-join against the judged spans, without copying the pool)
    queue = judging_queue_frame(
        pool.filter(~judged),
        None,
        query_suites,
        cap_per_query=cfg.judging.queue_cap_per_query,
        source_reader=span_reader(roots) if roots else None,
    )
    out = export_queue(queue, judging_dir(context.partition_key), cfg.judging.grades)
    unjudged = pool.height - int(judged.sum())
    context.add_output_metadata(
        table_metadata(
            queue,
            headline=markdown_table(queue.group_by("qid").len().sort("len", descending=True).head(10)),
            preview=queue.head(8),
            unjudged_pool_members=unjudged,
            queued=queue.height,
            cap_per_query=cfg.judging.queue_cap_per_query,
            label_studio_tasks=dg.MetadataValue.path(str(out["tasks"])),
            label_studio_config=dg.MetadataValue.path(str(out["config"])),
            code_shown=int(queue["code"].is_not_null().sum()),
        )
    )
    return queue


@dg.asset(
    description="Per-query metrics (SPEC §4, span-only credit): nDCG@10, Recall@50, SLA-Recall@50, MRR@10, "
    "Success@1/5/10, plus judged@10 and file-credit diagnostics. Failed queries score 0.",
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
)
def per_query(
    context: dg.AssetExecutionContext,
    agg: pl.DataFrame,
    hits: pl.LazyFrame,  # read one system at a time (issue 22)
    qrels: pl.DataFrame,
    query_suites: pl.DataFrame,
) -> pl.DataFrame:
    pq = per_query_metrics(agg, hits, qrels, queries=query_suites)
    means = (
        pq.group_by("system")
        .agg([pl.col(m).mean() for m in contracts.PER_QUERY_METRICS] + [pl.col("failed").sum()])
        .sort("system")
    )
    context.add_output_metadata(table_metadata(pq, headline=markdown_table(means)))
    return pq


@dg.asset(
    description="Scores: every system × slice × metric with a paired percentile bootstrap CI over queries "
    "(B >= 2000, seeded) — SPEC §5.",
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet", "numpy"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
)
def scores(context: dg.AssetExecutionContext, per_query: pl.DataFrame) -> pl.DataFrame:
    cfg = load_config()
    s = score(per_query, b=cfg.run.ci_b, seed=cfg.run.seed, alpha=cfg.run.alpha)
    head = s.filter((pl.col("slice") == "all") & (pl.col("metric") == "ndcg_10")).select(
        "system", "mean", "ci_low", "ci_high", "n"
    )
    context.add_output_metadata(
        table_metadata(
            s,
            contracts.SCORES_SCHEMA,
            headline=markdown_table(head),
            bootstrap_b=cfg.run.ci_b,
            seed=dg.MetadataValue.text(str(cfg.run.seed)),  # big integers as text (no float rounding)
            unjudged_top10_by_slice=dg.MetadataValue.md(markdown_table(unjudged_share(s))),
            # numbers over weeks (the Plots tab): per system nDCG@10, SLA-Recall@50, p95, p99, judged@10
            **headline_figures(s, systems=[x.name for x in current_systems(context)]),
        )
    )
    return s


@dg.asset(
    description="hero_span_v22: per system, each headline metric with its 95% CI (slice `all`).",
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
)
def hero_table(context: dg.AssetExecutionContext, scores: pl.DataFrame) -> pl.DataFrame:
    systems = current_systems(context)
    t = hero_table_df(scores, systems)
    context.add_output_metadata(
        table_metadata(
            t,
            headline=hero_markdown(t),
            # each system's headline metrics with their 95% CIs, as a picture (issue 23)
            ci_whiskers=dg.MetadataValue.md(ci_whiskers_markdown(scores, title=f"week {context.partition_key}")),
        )
    )
    return t


def hero_table_df(scores_df: pl.DataFrame, systems) -> pl.DataFrame:
    return build_hero_table(scores_df, {s.name: s.cfg_hash for s in systems}, {s.name: s.pack for s in systems})


lens_assets = [
    query_suites,
    raw_runs,
    agg_and_hits,
    pool,
    qrels_and_pool_counts,
    judging_queue,
    per_query,
    scores,
    hero_table,
]
