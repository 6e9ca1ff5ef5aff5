"""The data contract: every table's columns and types, in one place (SPEC §2, §3, §10, §12).

Writers, readers, the schema guard, the bundle and the tests import these; nobody retypes a
column name. Types are Arrow types because Parquet is the storage format.
"""

from __future__ import annotations

import pyarrow as pa

# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------
WHY_REASONS: tuple[str, ...] = ("lex", "struct", "sem")
SHARD_STATUSES: tuple[str, ...] = ("ok", "timeout", "cancelled", "error")
DATA_SOURCES: tuple[str, ...] = ("sim", "local", "prod")
SLICE_ALL = "all"
SLICE_DIMENSIONS: tuple[str, ...] = ("intent", "language", "suite")

# ---------------------------------------------------------------------------------------------
# Wire format (SPEC §2): one hit line and the done line of a /search NDJSON stream
# ---------------------------------------------------------------------------------------------
WIRE_HIT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "rank": int,
    "repo": str,
    "path": str,
    "start_line": int,
    "end_line": int,
    "score": (int, float),
    "why": list,
}
WIRE_DONE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "lat_ms": (int, float),
    "cfg_hash": str,
    "shards": list,
    "cost": dict,
}

# ---------------------------------------------------------------------------------------------
# Raw-run record (SPEC §3): one JSON line per query in runs/<env>/<run_id>/<system>.ndjson.
# The file ends with a trailer line {"type": "done", "records": N}: a file without it is a
# truncated stream and is refused by ingestion.
# ---------------------------------------------------------------------------------------------
HIT_STRUCT = pa.struct(
    [
        ("rank", pa.int32()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("score", pa.float64()),
        ("why", pa.list_(pa.string())),
        ("shard", pa.int32()),
    ]
)
SHARD_STRUCT = pa.struct(
    [
        ("shard", pa.int32()),
        ("probe_id", pa.string()),
        ("issued_ts", pa.float64()),
        ("first_byte_ts", pa.float64()),
        ("done_ts", pa.float64()),
        ("cancel_ts", pa.float64()),
        ("status", pa.string()),
    ]
)
COST_STRUCT = pa.struct([("probes", pa.int32()), ("cpu_ms", pa.float64())])

RAW_RECORD_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("system", pa.string()),
        ("cfg_hash", pa.string()),
        ("qid", pa.string()),
        ("suite", pa.string()),
        ("intent", pa.string()),
        ("language", pa.string()),
        ("req_ts", pa.float64()),  # epoch milliseconds
        ("sla_ms", pa.float64()),
        ("lat_ms", pa.float64()),
        ("hits", pa.list_(HIT_STRUCT)),
        ("shards", pa.list_(SHARD_STRUCT)),
        ("cost", COST_STRUCT),
        ("error", pa.string()),
    ]
)
# Fields every record must carry (present and non-null). `error` may be null; `lat_ms` may be
# null only on a failed query (error set).
RAW_REQUIRED: tuple[str, ...] = (
    "run_id",
    "system",
    "cfg_hash",
    "qid",
    "suite",
    "intent",
    "language",
    "req_ts",
    "sla_ms",
    "hits",
    "shards",
    "cost",
)
RAW_PRESENT: tuple[str, ...] = RAW_REQUIRED + ("lat_ms", "error")
# Python types accepted per top-level field by the line validator (JSON has no int/float split
# for floats, so ints are accepted where floats are expected).
RAW_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "system": (str,),
    "cfg_hash": (str,),
    "qid": (str,),
    "suite": (str,),
    "intent": (str,),
    "language": (str,),
    "req_ts": (int, float),
    "sla_ms": (int, float),
    "lat_ms": (int, float, type(None)),
    "hits": (list,),
    "shards": (list,),
    "cost": (dict,),
    "error": (str, type(None)),
}
HIT_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "rank": (int,),
    "repo": (str,),
    "path": (str,),
    "start_line": (int,),
    "end_line": (int,),
    "score": (int, float),
    "why": (list,),
    "shard": (int, type(None)),
}
SHARD_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "shard": (int,),
    "probe_id": (str,),
    "issued_ts": (int, float),
    "first_byte_ts": (int, float, type(None)),
    "done_ts": (int, float, type(None)),
    "cancel_ts": (int, float, type(None)),
    "status": (str,),
}
COST_FIELD_TYPES: dict[str, tuple[type, ...]] = {"probes": (int,), "cpu_ms": (int, float)}
RAW_TRAILER_TYPE = "done"

# ---------------------------------------------------------------------------------------------
# Canonical tables (SPEC §3, §10)
# ---------------------------------------------------------------------------------------------
AGG_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("system", pa.string()),
        ("cfg_hash", pa.string()),
        ("qid", pa.string()),
        ("suite", pa.string()),
        ("intent", pa.string()),
        ("language", pa.string()),
        ("req_ts", pa.timestamp("ms", tz="UTC")),
        ("sla_ms", pa.float64()),
        ("lat_ms", pa.float64()),
        ("within_sla", pa.bool_()),
        ("n_hits", pa.int32()),
        ("n_hits_in_sla", pa.int32()),
        ("shards_total", pa.int32()),
        ("shards_timed_out", pa.int32()),
        ("probes", pa.int32()),
        ("cpu_ms", pa.float64()),
        ("hedged", pa.bool_()),
        ("why_mix_lex", pa.float64()),
        ("why_mix_struct", pa.float64()),
        ("why_mix_sem", pa.float64()),
        ("error", pa.string()),
        ("attestation_sha256", pa.string()),
    ]
)
HITS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("system", pa.string()),
        ("qid", pa.string()),
        ("rank", pa.int32()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("score", pa.float64()),
        ("why_lex", pa.bool_()),
        ("why_struct", pa.bool_()),
        ("why_sem", pa.bool_()),
        ("shard", pa.int32()),
        ("in_sla", pa.bool_()),
    ]
)
POOL_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("systems", pa.list_(pa.string())),
        ("best_rank", pa.int32()),
    ]
)
POOL_COUNTS_COLUMNS: tuple[str, ...] = ("system", "contributed", "unique_contributed", "judged_share")
QRELS_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("rel", pa.int32()),
        ("source", pa.string()),
    ]
)
QUERIES_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("text", pa.string()),
        ("suite", pa.string()),
        ("intent", pa.string()),
        ("language", pa.string()),
    ]
)
# Ground truth the simulator or the reference engine knows for each query.
GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("rel", pa.int32()),
    ]
)

# Per-query metrics, in the bundle exactly these columns (SPEC §10).
PER_QUERY_METRICS: tuple[str, ...] = (
    "ndcg_10",
    "recall_50",
    "sla_recall_50",
    "mrr_10",
    "success_1",
    "success_5",
    "success_10",
)
PER_QUERY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("system", pa.string()),
        ("qid", pa.string()),
        ("suite", pa.string()),
        ("intent", pa.string()),
        ("language", pa.string()),
        ("lat_ms", pa.float64()),
    ]
    + [(m, pa.float64()) for m in PER_QUERY_METRICS]
)
# Diagnostics computed per query beside the bundle's columns (kept in the pipeline's own
# per-query table; aggregated into scores.parquet).
PER_QUERY_DIAGNOSTICS: tuple[str, ...] = (
    "judged_10",
    "span_gain_10",
    "file_gain_10",
    "failed",
    "within_sla",
    "probes",
    "cpu_ms",
)

SCORES_SCHEMA = pa.schema(
    [
        ("system", pa.string()),
        ("slice", pa.string()),
        ("metric", pa.string()),
        ("mean", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n", pa.int64()),
    ]
)
COMPARISONS_SCHEMA = pa.schema(
    [
        ("control", pa.string()),
        ("test", pa.string()),
        ("slice", pa.string()),
        ("metric", pa.string()),
        ("delta", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("p_value", pa.float64()),
        ("p_holm", pa.float64()),
    ]
)

# Metrics published in scores.parquet and the hero table. Quality metrics are means of the
# per-query table; latency metrics are percentiles of lat_ms; the rest are described where
# they are computed (lens_core.measures.scoring).
QUALITY_METRICS: tuple[str, ...] = PER_QUERY_METRICS
LATENCY_METRICS: tuple[str, ...] = ("lat_p50", "lat_p95", "lat_p99", "p99_p95", "within_sla")
DIAGNOSTIC_METRICS: tuple[str, ...] = ("judged_10", "file_credit", "failed", "probes", "cpu_ms")
HERO_TABLE_METRICS: tuple[str, ...] = (
    "ndcg_10",
    "recall_50",
    "sla_recall_50",
    "mrr_10",
    "success_10",
    "lat_p95",
    "lat_p99",
    "p99_p95",
    "within_sla",
    "judged_10",
    "file_credit",
    "cpu_ms",
)

# Bundle layout (SPEC §10): file names other tools read.
BUNDLE_FILES: dict[str, str] = {
    "agg": "agg.parquet",
    "hits": "hits.parquet",
    "pool": "pool.parquet",
    "pool_counts": "pool_counts_by_system.csv",
    "qrels": "qrels.parquet",
    "per_query": "per_query.parquet",
    "scores": "scores.parquet",
    "comparisons": "comparisons.parquet",
    "hero_table": "tables/hero_span_v22.csv",
    "attestation": "attestation.json",
}
# Every table of a bundle and the staging asset it is copied from (BUNDLE_FILES names the place
# of the first ones; the others sit at their key). A `.csv` place is written from the table.
BUNDLE_TABLES: dict[str, str] = {
    "agg": "agg",
    "hits": "hits",
    "pool": "pool",
    "qrels": "qrels",
    "per_query": "per_query",
    "scores": "scores",
    "comparisons": "comparisons",
    "queries.parquet": "query_suites",
    "tables/promotion_rules.parquet": "promotion_rules",
    "hero_table": "hero_table",
    "pool_counts": "pool_counts",
    "tables/gates.csv": "gate_summary",
    "tables/heroes.csv": "heroes",
    "tables/canary_steps.csv": "canary_steps",
    "tables/canary_windows.csv": "canary_windows",
    "tables/canary_decisions.csv": "canary_decisions",
}
# Columns a bundle keeps of a table (the rest stay in staging).
BUNDLE_COLUMNS: dict[str, tuple[str, ...]] = {"pool_counts": POOL_COUNTS_COLUMNS}
PUBLISHED_POINTER = "published.json"
FINGERPRINT_PREFIX = "v22"

# LVM evaluation output (SPEC §12).
LVM_EVAL_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("lane", pa.string()),
        ("k", pa.int32()),
        ("hit", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n_queries", pa.int64()),
        ("n_candidates", pa.int64()),
        ("p95_ms", pa.float64()),
    ]
)


def schema_markdown(schema: pa.Schema) -> str:
    """A markdown table of a schema, for asset metadata and docs."""
    lines = ["| column | type |", "| --- | --- |"]
    lines += [f"| {f.name} | {f.type} |" for f in schema]
    return "\n".join(lines)
