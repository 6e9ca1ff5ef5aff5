"""The weekly gate battery (SPEC §7): every gate of a week evaluated over its tables, the
decisions each comparison stands for, and the gate summary's table form. Pure: the Dagster
layer (`lens_assets.decisions`) calls `evaluate_gates` and writes `gates_frame(...)`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import polars as pl

from lens_core.collect.rawruns import write_raw_run
from lens_core.common.hashing import sha256_hex
from lens_core.common.settings import load_config
from lens_core.common.systems import SystemConfig
from lens_core.decide.gates import (
    GateResult,
    calibration_parity_gate,
    cfg_hash_gate,
    cost_gate,
    decision_gates,
    ece_gate,
    file_credit_gate,
    flatline_gate,
    gate_result,
    pool_gate,
    schema_gate,
    sla_recall_gate,
    tail_gate,
)
from lens_core.decide.promotion import promotion_config
from lens_core.ingest.ndjson import ingest
from lens_core.measures.registry import extra_measures
from lens_core.sim.simulator import Simulator

DECISION_METRICS = ["ndcg_10", "recall_50", "sla_recall_50", "mrr_10"]


def decision_metrics() -> list[str]:
    """The metrics each decision compares: DECISION_METRICS, then the configured extra measures
    (`measures:` in the config, resolved by the registry: their per-query columns; issue 19)."""
    return DECISION_METRICS + [m.column for m in extra_measures()]


GATE_NAMES = (
    "schema",
    "parity",
    "pool",
    "ece",
    "power",
    "ci_width",
    "tail",
    "sla_recall",
    "file_credit",
    "flatline",
    "calibration_parity",
    "cost",
    "cfg_hash",
)
GATE_SUMMARY_SCHEMA = {
    "gate": pl.String,
    "subject": pl.String,
    "value": pl.Float64,
    "threshold": pl.String,
    "blocking": pl.Boolean,
    "passed": pl.Boolean,
    "status": pl.String,
    "reason": pl.String,
    "owner": pl.String,
}


def decision_pairs(systems) -> list[tuple[str, str]]:
    """(control, test) per decision: every pack variant and the tail arm vs the baseline, and
    the A/A pair that gives the noise floor."""
    base = systems[0].name
    return [(base, s.name) for s in systems[1:]]


def primary_comparisons(systems) -> dict[str, tuple[str, str, float]]:
    promo = promotion_config()["promotion"]
    out = {}
    for s in systems[1:]:
        pack = s.pack
        if pack == "aa":
            spec = promo.get("lexical_pack_a", {}).get("primary")  # A/A judged on the overall metric
            out[s.name] = ("ndcg_10", "all", spec["needed"] if spec else 0.01)
        elif pack in promo:
            p = promo[pack]["primary"]
            out[s.name] = (p["metric"], p["slice"], p["needed"])
    return out


def calibration_version(report: pl.DataFrame) -> str:
    """A version for the config lock: hash of the calibrator versions used by the cells."""
    vs = (
        sorted(set(report["calibrator_version"].drop_nulls().to_list()))
        if "calibrator_version" in report.columns
        else []
    )
    return sha256_hex(json.dumps(vs).encode())[:16]


def evaluate_gates(
    raw_runs,
    agg,
    scores,
    per_query,
    comparisons,
    calibration,
    calibration_parity,
    query_suites,
    systems,
    source: str = "sim",
    sla_ms: float = 150.0,
    judging_queue: pl.DataFrame | None = None,
    judging_queue_path: str | None = None,
) -> list[GateResult]:
    base = systems[0].name
    gates = [schema_gate(raw_runs.height, int(raw_runs["records"].sum()))]
    gates += parity_gate(raw_runs, agg, query_suites, source, systems[0], sla_ms)
    gates += (
        pool_gate(scores, None if judging_queue is None else judging_queue.height, judging_queue_path)
        + ece_gate(calibration, source)
        + decision_gates(comparisons, primary_comparisons(systems))
    )
    gates += (
        tail_gate(scores)
        + sla_recall_gate(scores, base, per_query)
        + file_credit_gate(scores)
        + flatline_gate(per_query)
    )
    gates += calibration_parity_gate(calibration_parity) + cost_gate(scores, base, per_query)
    gates += cfg_hash_gate(agg, systems)
    return gates


def parity_gate(
    raw_runs: pl.DataFrame,
    agg: pl.DataFrame,
    queries: pl.DataFrame,
    source: str = "sim",
    baseline: SystemConfig | None = None,
    sla_ms: float = 150.0,
) -> list[GateResult]:
    """SPEC §7 parity. Every system: raw records, agg rows and the suite's queries agree in count.
    With `local`/`prod` also: the simulator's ingestor over the same qids gives the same agg
    rows per qid as the HTTP ingestion of the baseline (the two ingestors agree)."""
    counts = agg.group_by("system").len()
    by = dict(zip(counts["system"].to_list(), counts["len"].to_list()))
    out = []
    for system, records in raw_runs.select("system", "records").iter_rows():
        rows = by.get(system, 0)
        diff = abs(rows - records) + abs(rows - queries.height)
        out.append(
            gate_result(
                "parity",
                float(diff),
                diff == 0,
                f"raw records {records}, agg rows {rows}, suite queries {queries.height}",
                system,
            )
        )
    if source != "sim" and baseline is not None:
        cfg = load_config()
        sim = Simulator(cfg.sim, seed=cfg.run.seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sim.ndjson"
            write_raw_run(path, sim.run(baseline, "parity", queries, sla_ms, cfg.run.k, 0.0))
            sim_agg, _ = ingest([path])
        sim_rows = pl.from_arrow(sim_agg).group_by("qid").len().rename({"len": "sim_rows"})
        http_rows = agg.filter(pl.col("system") == baseline.name).group_by("qid").len().rename({"len": "http_rows"})
        j = sim_rows.join(http_rows, on="qid", how="full", coalesce=True).fill_null(0)
        bad = j.filter(pl.col("sim_rows") != pl.col("http_rows"))
        out.append(
            gate_result(
                "parity",
                float(bad.height),
                bad.height == 0,
                f"sim vs {source} ingestion of the same {j.height} qids: {bad.height} qid(s) with "
                f"different agg row counts",
                f"{baseline.name}:sim-vs-{source}",
            )
        )
    return out


def gates_frame(gates: list[GateResult]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "gate": g.name,
                "subject": g.subject,
                "value": g.value,
                "threshold": None if g.threshold is None else str(g.threshold),
                "blocking": g.blocking,
                "passed": g.passed,
                "status": g.status,
                "reason": g.reason,
                "owner": g.owner,
            }
            for g in gates
        ],
        schema=GATE_SUMMARY_SCHEMA,
    )


def frame_gates(df: pl.DataFrame) -> list[GateResult]:
    return [
        GateResult(
            name=r["gate"],
            value=r["value"],
            threshold=_num(r["threshold"]),
            blocking=r["blocking"],
            passed=r["passed"],
            reason=r["reason"],
            owner=r["owner"],
            subject=r["subject"],
            status=r["status"],
        )
        for r in df.iter_rows(named=True)
    ]


def _num(s):
    if s is None:
        return None
    try:
        return float(s)
    except ValueError:
        return s
