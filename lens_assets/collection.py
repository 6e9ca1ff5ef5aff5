"""Collection and ingestion of the week, fanned out per system (issue 22): `raw_runs` and
`agg`/`hits` are graphs of ops whose middle op is mapped (Dagster dynamic outputs) over the
systems of the run, so the multiprocess and celery executors run systems in parallel and a
failed system's step is retried (or re-executed from failure) alone; the last op of each gathers
the systems into the one asset every later step reads.

raw_runs:      collection_groups -> collect_systems[<system> | interleaved] -> raw_runs_manifest
agg + hits:    ingest_plan -> ingest_system[<system>] -> ingest_gather
"""

import re
import shutil
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.parquet as pq

from lens_assets.common import GROUP, OWNERS_CORE, OWNERS_EVAL, current_systems, run_id_for, weekly_partitions
from lens_assets.metadata import markdown_table, table_metadata
from lens_core.collect.client import LensUnreachable
from lens_core.collect.preflight import REFUSAL_ERRORS
from lens_core.collect.rawruns import raw_run_path
from lens_core.common import contracts, objectstore
from lens_core.common.calendar import partition_t0_ms
from lens_core.common.settings import data_dir, load_config
from lens_core.common.tables import SchemaError, merge_parquet
from lens_core.ingest.ndjson import combine_agg, ingest_to_parquet
from resources.data_source import LensDataSource

# ---------------------------------------------------------------------------------------------
# Collection and ingestion, fanned out per system (issue 22): each is a graph of ops whose middle
# op is mapped (Dagster dynamic outputs) over the systems of the run, so the multiprocess and
# celery executors run systems in parallel and a failed system's step is retried (or re-executed
# from failure) alone; the last op gathers the systems into the one asset every later step reads.
# ---------------------------------------------------------------------------------------------
# A system's collection step is retried on its own when the failure is transient (the endpoint
# unreachable, a reset connection, a timeout): twice, after 2 s then 4 s. A refusal (credentials,
# settings: preflight.REFUSAL_ERRORS) is not retried, nor is ingestion: its failures are the
# data's (a bad record), which a retry would only repeat.
COLLECT_RETRIES = 2


def transient(e: BaseException) -> bool:
    if type(e).__name__ in REFUSAL_ERRORS:
        return False
    return isinstance(e, (LensUnreachable, ConnectionError, TimeoutError))


STEP_IO = "step_io_manager"  # the small per-step hand-overs between the ops below


def mapping_keys(names: list[str]) -> dict[str, str]:
    """A Dagster mapping key per system name (letters, digits and `_` only, unique)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        key = re.sub(r"[^A-Za-z0-9_]", "_", name) or "system"
        k, n = key, 2
        while k in used:
            k, n = f"{key}_{n}", n + 1
        used.add(k)
        out[name] = k
    return out


def collection_groups_for(source: str, interleave: bool, names: list[str]) -> list[list[str]]:
    """The collection steps of a run: one per system, except that systems measured against a
    live endpoint (`local`, `prod`) with `collect.interleave` on are collected in ONE step that
    interleaves them over the same queries (issue 17: their latencies are only comparable when
    they share the moments they were measured in)."""
    if source == "sim" or not interleave or len(names) < 2:
        return [[n] for n in names]
    return [list(names)]


_MANIFEST_SCHEMA = {
    "system": pl.String,
    "pack": pl.String,
    "cfg_hash": pl.String,
    "path": pl.String,
    "sha256": pl.String,
    "records": pl.Int64,
    "errors": pl.Int64,
    "collection": pl.String,
    "seed": pl.Int64,
    "block": pl.Int64,
    "concurrency": pl.Int64,
}


@dg.op(
    description="The collection steps of the run: one per system, or one interleaved step for systems on a live "
    "endpoint.",
    out=dg.DynamicOut(io_manager_key=STEP_IO),
)
def collection_groups(context: dg.OpExecutionContext, lens_source: LensDataSource, query_suites: pl.DataFrame):
    names = [s.name for s in current_systems(context)]
    groups = collection_groups_for(lens_source.resolved_source(), load_config().collect.interleave, names)
    keys = mapping_keys(names)
    for g in groups:
        yield dg.DynamicOutput(g, mapping_key=keys[g[0]] if len(g) == 1 else "interleaved")


@dg.op(
    description="Collect one system (or one interleaved group) of the week into its raw-run file(s).",
    out=dg.Out(io_manager_key=STEP_IO),
)
def collect_systems(
    context: dg.OpExecutionContext, lens_source: LensDataSource, group: list, query_suites: pl.DataFrame
) -> list:
    cfg = load_config()
    pk = context.partition_key
    run_id = run_id_for(pk)
    env = cfg.run.env if lens_source.resolved_source() != "prod" else "prod"
    root = data_dir()
    systems = [s for s in current_systems(context) if s.name in set(group)]
    paths = {s.name: raw_run_path(root, env, run_id, s.name) for s in systems}
    t = time.monotonic()
    try:
        got = lens_source.collect_week(systems, query_suites, run_id, partition_t0_ms(pk), cfg.run.k, paths)
    except Exception as e:
        if transient(e) and context.retry_number < COLLECT_RETRIES:
            wait = 2.0 * 2**context.retry_number
            context.log.warning(f"{', '.join(group)}: {type(e).__name__}: {e}; retrying this step alone in {wait:.0f}s")
            raise dg.RetryRequested(max_retries=COLLECT_RETRIES, seconds_to_wait=wait) from e
        raise
    rows = []
    for system in systems:
        info = got["systems"][system.name]
        rows.append(
            {
                "system": system.name,
                "pack": system.pack,
                "cfg_hash": system.cfg_hash,
                "path": str(paths[system.name].relative_to(root)),
                "sha256": info["sha256"],
                "records": info["records"],
                "errors": info["errors"],
                "collection": got["order"],
                "seed": got["seed"],
                "block": got["block"],
                "concurrency": got["concurrency"],
            }
        )
        context.log.info(f"{system.name}: {info['records']} queries, {info['errors']} errors")
    context.log.info(f"{len(systems)} system(s) collected ({got['order']}) in {time.monotonic() - t:.1f}s")
    extra = {k: got[k] for k in ("window", "max_buffered", "wall_s") if k in got}
    return [{"rows": rows, "env": env, "data_source": lens_source.describe(), "collection": extra}]


@dg.op(description="The manifest of the week's raw-run files, in the run's system order.")
def raw_runs_manifest(context: dg.OpExecutionContext, parts: list) -> pl.DataFrame:
    order = {s.name: i for i, s in enumerate(current_systems(context))}
    flat = [p for part in parts for p in part]
    rows = sorted((r for p in flat for r in p["rows"]), key=lambda r: order.get(r["system"], len(order)))
    manifest = pl.DataFrame(rows, schema=_MANIFEST_SCHEMA, orient="row")
    first = rows[0] if rows else {}
    collection = {k: first.get(k) for k in ("collection", "seed", "block", "concurrency")}
    collection["order"] = collection.pop("collection", None)
    collection["steps"] = len(flat)
    for p in flat:
        collection.update(p["collection"])
    context.add_output_metadata(
        table_metadata(
            manifest,
            headline=markdown_table(manifest.select("system", "records", "errors")),
            run_id=run_id_for(context.partition_key),
            env=flat[0]["env"] if flat else "",
            data_source=dg.MetadataValue.json(flat[0]["data_source"] if flat else {}),
            collection=dg.MetadataValue.json(collection),
        )
    )
    return manifest


@dg.graph_asset(
    description="Raw runs: every system's answers to every query, one NDJSON record per query under "
    "`$LENS_DATA_DIR/runs/<env>/<run_id>/<system>.ndjson` (atomic, sha256 recorded). "
    "The table is the manifest of the files. One collection step per system (an interleaved step for "
    "systems on a live endpoint), run in parallel by the executor and retried alone.",
    owners=OWNERS_CORE,
    kinds={"ndjson", "python"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
)
def raw_runs(query_suites: pl.DataFrame) -> pl.DataFrame:
    groups = collection_groups(query_suites)
    return raw_runs_manifest(groups.map(lambda g: collect_systems(g, query_suites)).collect())


def _ingest_scratch(run_id: str) -> Path:
    # per-system parts live here until the gathering step has merged them (any worker may run it)
    return data_dir() / "staging" / ".ingest" / run_id


@dg.op(description="One ingestion step per raw-run file (system).", out=dg.DynamicOut(io_manager_key=STEP_IO))
def ingest_plan(context: dg.OpExecutionContext, raw_runs: pl.DataFrame):
    if raw_runs.height == 0:
        raise SchemaError("no raw-run files to ingest")
    keys = mapping_keys(raw_runs["system"].to_list())
    for system, path in raw_runs.select("system", "path").iter_rows():
        yield dg.DynamicOutput({"system": system, "path": path, "key": keys[system]}, mapping_key=keys[system])


@dg.op(description="Ingest one system's raw run into its agg rows and hits part.", out=dg.Out(io_manager_key=STEP_IO))
def ingest_system(context: dg.OpExecutionContext, item: dict) -> dict:
    root = data_dir()
    scratch = _ingest_scratch(context.run_id)
    # the plan's key, unique among the run's systems (two names may sanitise alike: "a.b", "a_b")
    key = item["key"]
    agg_path, hits_path = scratch / f"{key}.agg.parquet", scratch / f"{key}.hits.parquet"
    agg, hits = ingest_to_parquet([root / item["path"]], agg_path, hits_path)
    # the parts are handed over by their place in the data dir (committed to its bucket when
    # the data dir is one): the gathering step may run on another worker
    objectstore.commit_file(agg_path)
    objectstore.commit_file(hits.path, hits.sha256)
    context.log.info(f"{item['system']}: {agg.num_rows} queries, {hits.rows} hits")
    return {
        "system": item["system"],
        "agg": agg_path.relative_to(root).as_posix(),
        "hits": Path(hits.path).relative_to(root).as_posix(),
        "rows": hits.rows,
    }


@dg.op(
    description="Gather the systems' agg rows and hits parts into the week's agg and hits tables.",
    out={"agg": dg.Out(), "hits": dg.Out()},
)
def ingest_gather(context: dg.OpExecutionContext, raw_runs: pl.DataFrame, parts: list):
    root = data_dir()
    by_system = {p["system"]: p for p in parts}
    ordered = [by_system[s] for s in raw_runs["system"].to_list()]
    for p in ordered:
        objectstore.sync_file(root / p["agg"])
        objectstore.sync_file(root / p["hits"])
    scratch = _ingest_scratch(context.run_id)
    agg = combine_agg([pl.read_parquet(root / p["agg"]) for p in ordered])
    hits_file = merge_parquet([root / p["hits"] for p in ordered], scratch / "hits.parquet", contracts.HITS_SCHEMA)
    yield from _agg_and_hits_outputs(agg, hits_file, len(ordered))
    # gathered: the parts (of this run, or of the run this one re-executes) are no longer needed;
    # on a failure they stay, for a re-execution from failure
    for d in {(root / p["hits"]).parent for p in ordered} | {scratch}:
        shutil.rmtree(d, ignore_errors=True)


@dg.graph_multi_asset(
    outs={
        "agg": dg.AssetOut(
            description="One row per (run_id, system, qid): latency, SLA, shards, cost, why-mix, "
            "attestation_sha256 of the raw file (SPEC §3). Ingested one system per step.",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
        ),
        "hits": dg.AssetOut(
            description="One row per returned hit with span, score, why flags, shard, in_sla; the systems' "
            "row groups in the run's system order.",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
        ),
    },
    group_name=GROUP,  # graph_multi_asset takes the group here (AssetOut.group_name is ignored)
    partitions_def=weekly_partitions,
)
def agg_and_hits(raw_runs: pl.DataFrame):
    parts = ingest_plan(raw_runs).map(ingest_system).collect()
    agg, hits = ingest_gather(raw_runs, parts)
    return {"agg": agg, "hits": hits}


def _agg_and_hits_outputs(agg: pl.DataFrame, hits_file, raw_runs_n: int):
    preview = pl.from_arrow(
        next(pq.ParquetFile(hits_file.path).iter_batches(batch_size=8), None) or contracts.HITS_SCHEMA.empty_table()
    )
    summary = (
        agg.group_by("system")
        .agg(
            pl.len().alias("queries"),
            pl.col("error").is_not_null().sum().alias("errors"),
            pl.col("within_sla").mean().alias("within_sla"),
            pl.col("lat_ms").quantile(0.95).alias("p95_ms"),
            pl.col("why_mix_sem").mean().alias("why_sem"),
        )
        .sort("system")
    )
    yield dg.Output(
        agg,
        output_name="agg",
        metadata=table_metadata(agg, contracts.AGG_SCHEMA, headline=markdown_table(summary), files_ingested=raw_runs_n),
    )
    yield dg.Output(
        hits_file,
        output_name="hits",
        metadata=table_metadata(
            preview, contracts.HITS_SCHEMA, preview=preview, **{"dagster/row_count": hits_file.rows}
        ),
    )
