"""The data contract: every table's columns and types, in one place (SPEC §2, §3, §10, §12).

Writers, readers, the schema guard, the bundle and the tests import these; nobody retypes a
column name. Types are Arrow types because Parquet is the storage format.

Why this is one module: a column's name, its type and what it means (`COLUMN_DOCS`, shown as
the column descriptions in the UI) are one fact of the contract; split over modules, a renamed
or added column would be changed in one place and not the other.
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


# ---------------------------------------------------------------------------------------------
# Column documentation (issue 23): what each column means, one entry per column name, shown as
# the column descriptions of every table asset (`dagster/column_schema`). A name means one thing
# everywhere; where tables use it for different subjects, the entry says so per table. The CI
# bound columns of the hero table and the per-reason columns are derived from their base entry.
# ---------------------------------------------------------------------------------------------
_METRIC_DOCS: dict[str, str] = {
    "ndcg_10": "nDCG@10 with span credit: graded gain of the top 10 hits over the ideal ranking (SPEC §4)",
    "recall_50": "Recall@50: share of the query's relevant spans found in the top 50 hits",
    "sla_recall_50": "SLA-Recall@50: Recall@50 counting only hits returned within the SLA (a late hit earns nothing)",
    "mrr_10": "MRR@10: 1 / rank of the first relevant hit in the top 10, 0 if none",
    "success_1": "Success@1: 1 when the first hit is relevant, else 0",
    "success_5": "Success@5: 1 when a relevant hit is in the top 5, else 0",
    "success_10": "Success@10: 1 when a relevant hit is in the top 10, else 0",
    "lat_p50": "median latency of the system's queries, ms",
    "lat_p95": "95th percentile latency of the system's queries, ms",
    "lat_p99": "99th percentile latency of the system's queries, ms",
    "p99_p95": "tail ratio p99 / p95 latency (the tail gate)",
    "within_sla": "answered within the SLA (per query: true/1; aggregated: the share of queries)",
    "judged_10": "share of the top 10 hits that have a relevance label (pool depth check: judged@10)",
    "file_credit": "share of the gain earned only at file level (right file, wrong span) in the top 10",
    "failed": "the query failed (error set or an invalid answer): 1, else 0; aggregated: the share",
    "probes": "index probes the engine reported for the query (cost)",
    "cpu_ms": "CPU time the engine reported for the query, ms (cost)",
}
_WHY_DOCS: dict[str, str] = {
    "lex": "lexical (token) match",
    "struct": "structural (symbol / definition) match",
    "sem": "semantic (embedding) match",
}
COLUMN_DOCS: dict[str, str] = {
    **_METRIC_DOCS,
    # identity of a run, a system, a query
    "run_id": "the collection run the row belongs to",
    "system": "the evaluated system (a declared system or a hero-pack grid point)",
    "systems": "the systems whose top-k contributed this pooled span",
    "pack": "the hero pack of the system (lexical, router, ann, tail_taming, aa, or the baseline)",
    "cfg_hash": "16-hex hash of the system's configuration as the engine reported it (SPEC §8)",
    "qid": "query id, unique within the week's suites",
    "query": "the query text shown to the judge",
    "text": "the query text",
    "suite": "the query suite the query belongs to",
    "intent": "the query's intent (e.g. nl, identifier): a slice dimension",
    "language": "the programming language the query targets: a slice dimension",
    "slice": "`all`, or `dimension=value` for one intent, language or suite",
    "metric": "the metric's column name (ndcg_10, sla_recall_50, lat_p99, ...)",
    # a raw run and its aggregate
    "req_ts": "when the request was sent (UTC)",
    "sla_ms": "the latency SLA the query was run under, ms",
    "lat_ms": "end-to-end latency of the query, ms (null when it failed)",
    "n_hits": "hits returned for the query",
    "n_hits_in_sla": "hits returned within the SLA",
    "shards_total": "shards the query was fanned out to",
    "shards_timed_out": "shards that timed out for the query",
    "hedged": "a hedged (duplicate) shard request was sent for the query",
    "error": "why the query failed (null when it succeeded)",
    "hits": "the query's ranked hits as the engine answered them (raw record)",
    "shards": "per shard: probe id, timestamps and status (raw record)",
    "cost": "the engine's cost report: probes and cpu_ms (raw record)",
    "attestation_sha256": "sha256 of the raw NDJSON file the row was ingested from",
    "records": "query records in the raw NDJSON file",
    "errors": "failed queries in the raw NDJSON file",
    "sha256": "sha256 of the file",
    "collection": "how the systems were collected: sequential, or interleaved (one seeded order of all "
    "(query, system) tasks, so every system sees the same conditions)",
    "block": "interleaved collection: queries per block; each block's system order is shuffled (null: sequential)",
    "concurrency": "requests in flight at once during collection",
    # a hit, a span
    "rank": "1-based rank of the hit in the system's answer",
    "best_rank": "the best rank any system gave the span",
    "repo": "repository of the span",
    "path": "file path of the span within its repository (raw_runs: the NDJSON file)",
    "start_line": "first line of the span (1-based, inclusive)",
    "end_line": "last line of the span (inclusive)",
    "score": "the engine's score for the hit",
    "shard": "the shard that returned the hit",
    "in_sla": "the hit arrived within the SLA",
    "code": "the span's code as shown to the judge",
    # labels
    "rel": "graded relevance of the span (0 = not relevant; higher is more relevant)",
    "source": "where the label comes from (simulator / engine ground truth, a human qrels file, ...)",
    "n_systems": "systems that returned the span in their top k",
    "priority": "judging priority (higher first: shallow ranks of many systems)",
    "contributed": "pool spans the system contributed",
    "unique_contributed": "pool spans only this system contributed",
    "judged_share": "share of the system's pooled spans that carry a label",
    # per-query diagnostics
    "n_hits_10": "hits in the top 10",
    "judged_hits_10": "labelled hits in the top 10",
    "span_gain_10": "gain earned at span level in the top 10 (what nDCG@10 counts)",
    "file_gain_10": "gain the top 10 would earn at file level (right file, any span)",
    # scores and comparisons
    "mean": "the metric's mean over queries (latency metrics: the percentile)",
    "ci_low": "lower bound of the 95% paired percentile bootstrap CI",
    "ci_high": "upper bound of the 95% paired percentile bootstrap CI",
    "n": "queries behind the figure (comparisons: paired queries)",
    "n_queries": "queries behind the row",
    "control": "the control system of the paired comparison",
    "test": "the test system (comparisons) or the canary test arm (canary tables)",
    "delta": "test − control mean of the metric over paired queries",
    "p_value": "paired permutation test p-value",
    "p_holm": "p-value after Holm's correction over the week's family of tests",
    "sd_diff": "standard deviation of the per-query differences",
    "mde": "minimum detectable effect at the configured power and α",
    "seed": "an RNG seed (comparisons: the decision's 64-bit seed, from the config seed and the pair; "
    "raw_runs: the seed of the interleaved order)",
    "needed_effect": "the effect the decision must be able to detect (the metric's margin)",
    "power_ok": "the MDE is within the needed effect (the comparison is powered)",
    # gates, rules, heroes
    "gate": "the gate's name (calibration: the ECE gate threshold the cell is judged against)",
    "subject": "what the gate judged: a system, a decision, a table or a calibration cell",
    "value": "the measured value the gate or rule judged",
    "threshold": "the threshold it is judged against",
    "blocking": "a failure blocks publication (ERROR) rather than warning (WARN)",
    "passed": "the row passed (insufficient rows do not block: see status)",
    "status": "what a reader is shown: pass | fail | insufficient (never pass for too little data); "
    "comparisons: ok | insufficient_n | no_overlap | zero_variance; canary windows: green | red | ...",
    "reason": "why, in one line",
    "owner": "the owner paged when it fails",
    "rule": "the promotion rule",
    "detail": "how the rule's value was reached",
    "hero": "the pack's promoted system (null: none was promoted)",
    "calibration_version": "version of the calibrators the hero was judged with",
    # calibration
    "level": "the cell level the calibrator was fitted at (cell, system×intent, system: back-off)",
    "calibrator": "the calibrator used for the cell (system|intent|language, `*` = backed off)",
    "calibrator_version": "content hash of the calibrator",
    "version": "content hash of the calibrator export",
    "n_fit": "labels in the fit half",
    "n_eval": "held-out labels the ECE is measured on",
    "n_pos_eval": "relevant held-out labels",
    "n_dropped": "labels dropped (non-finite confidence)",
    "n_scores": "confidences compared between the two exports",
    "ece": "expected calibration error on held-out labels",
    "adaptive_ece": "ECE with equal-mass bins",
    "debiased_ece": "ECE with the binning bias subtracted",
    "brier": "Brier score of the calibrated confidences",
    "merged_bin_share": "share of isotonic bins merged (flat steps)",
    "noise_floor": "95th percentile of the ECE a perfectly calibrated cell shows with this many labels",
    "labels_needed": "held-out labels needed for the noise floor to fall under the gate",
    "max_abs_diff": "largest absolute difference of the two exports' confidences",
    "ece_diff": "difference of the two exports' ECE",
    # canary
    "phase": "canary phase: aa (the A/A start) or ab",
    "step": "index of the ramp step",
    "pct": "share of traffic routed to the test arm, %",
    "window": "index of the judging window",
    "windows": "windows judged in the step",
    "window_queries": "queries per judging window of the step",
    "start_window": "first window of the step",
    "end_window": "last window of the step",
    "green_windows": "green windows in the step",
    "red_windows": "red windows in the step",
    "start": "window start (epoch ms)",
    "end": "window end (epoch ms)",
    "at": "when the decision was taken (epoch ms)",
    "seq": "order of the decision",
    "action": "the decision: advance | hold | revert",
    "decision": "how the step ended: advance | hold | revert",
    "from_pct": "traffic share before the decision, %",
    "to_pct": "traffic share after the decision, %",
    "paged": "the decision paged the owners",
    "n_control": "control queries in the window",
    "n_test": "test queries in the window",
    "calib_p99_ms": "p99 latency of the calibrated path in the window, ms",
    "calib_p99_threshold": "its limit, ms",
    "calib_p99_passed": "within its limit",
    "ece_threshold": "the ECE gate of the window",
    "ece_noise_floor": "the window's ECE noise floor",
    "ece_labels": "labels behind the window's ECE",
    "ece_status": "pass | fail | insufficient of the window's ECE",
    "ece_passed": "the window's ECE is within its gate",
    "conf_shift": "shift of mean confidence between the arms",
    "conf_shift_threshold": "its limit",
    "conf_shift_passed": "within its limit",
    "sla_recall_delta": "test − control SLA-Recall@50 in the window",
    "sla_recall_threshold": "the largest drop allowed",
    "sla_recall_passed": "within its limit",
    "lat_p99_control": "control p99 latency in the window, ms",
    "lat_p99_test": "test p99 latency in the window, ms",
    "red": "the window is red (a guard failed)",
    # load test
    "qps_at_sla": "highest offered rate (queries/s) whose p99 stayed within the SLA",
    "requests": "requests sent by the load test",
    "stopped": "why the load test stopped",
    "rates": "what the load test measured at each offered rate (JSON)",
    # LVM
    "model": "the LVM checkpoint evaluated",
    "lane": "the evaluation lane",
    "k": "cut-off of Hit@k",
    "hit": "Hit@k: share of queries whose target is in the top k",
    "n_candidates": "candidates ranked per query",
    "p95_ms": "95th percentile latency per query, ms",
}
COLUMN_DOCS.update({f"why_{r}": f"the engine said the hit is a {d}" for r, d in _WHY_DOCS.items()})
COLUMN_DOCS.update({f"why_mix_{r}": f"share of the query's hits with a {d}" for r, d in _WHY_DOCS.items()})
for _m in HERO_TABLE_METRICS:
    COLUMN_DOCS[f"{_m}_ci_low"] = f"lower bound of the 95% bootstrap CI of {_m}"
    COLUMN_DOCS[f"{_m}_ci_high"] = f"upper bound of the 95% bootstrap CI of {_m}"
