"""Every SPEC §7 gate passes and fails on crafted inputs; missing input fails, never passes."""

from __future__ import annotations

import polars as pl
import pytest

from lens_core.decide import gates as G


def _scores(rows):
    return pl.DataFrame(
        [{"system": s, "slice": "all", "metric": m, "mean": v, "ci_low": v, "ci_high": v, "n": 100} for s, m, v in rows]
    )


def test_thresholds_come_from_config():
    assert G.gate_config("pool").threshold == 0.9
    assert G.gate_config("ece").threshold == 0.02
    with pytest.raises(KeyError, match="nope"):
        G.gate_config("nope")


@pytest.mark.parametrize("value, ok", [(0.95, True), (0.85, False)])
def test_pool(value, ok):
    (g,) = G.pool_gate(_scores([("a", "judged_10", value)]))
    assert g.passed is ok and g.blocking and g.threshold == 0.9


@pytest.mark.parametrize("values, ok", [([0.1, 0.5, 0.9], True), ([0.3, 0.3, 0.3], False)])
def test_flatline(values, ok):
    pq = pl.DataFrame({"system": ["a"] * 3, "ndcg_10": values})
    (g,) = G.flatline_gate(pq)
    assert g.passed is ok


@pytest.mark.parametrize("value, ok", [(0.03, True), (0.08, False)])
def test_file_credit(value, ok):
    (g,) = G.file_credit_gate(_scores([("a", "file_credit", value)]))
    assert g.passed is ok


@pytest.mark.parametrize("value, ok", [(1.8, True), (2.3, False)])
def test_tail(value, ok):
    (g,) = G.tail_gate(_scores([("a", "p99_p95", value)]))
    assert g.passed is ok


@pytest.mark.parametrize("test_value, ok", [(0.80, True), (0.78, False)])
def test_sla_recall_vs_baseline(test_value, ok):
    (g,) = G.sla_recall_gate(_scores([("base", "sla_recall_50", 0.79), ("t", "sla_recall_50", test_value)]), "base")
    assert g.subject == "t" and g.passed is ok


@pytest.mark.parametrize("cpu, ok", [(10.4, True), (10.6, False)])
def test_cost_relative(cpu, ok):
    (g,) = G.cost_gate(_scores([("base", "cpu_ms", 10.0), ("t", "cpu_ms", cpu)]), "base")
    assert g.passed is ok


def test_schema():
    assert G.schema_gate(3, 300).passed
    assert not G.schema_gate(0, 0).passed


def _report(rows):
    return pl.DataFrame(
        [
            {"system": "a", "intent": i, "language": "python", "ece": e, "status": st, "labels_needed": None}
            for i, e, st in rows
        ],
        schema_overrides={"labels_needed": pl.Int64},
    )


def test_ece_pass_fail_insufficient():
    (g,) = G.ece_gate(_report([("nl", 0.01, "pass"), ("identifier", 0.015, "pass")]))
    assert g.passed and g.status == "pass"
    (g,) = G.ece_gate(_report([("nl", 0.01, "pass"), ("identifier", 0.03, "fail")]))
    assert not g.passed and "identifier" in g.reason
    (g,) = G.ece_gate(_report([("nl", 0.05, "insufficient")]))
    assert g.status == "insufficient" and "insufficient" in g.reason


def test_calibration_parity():
    ok = pl.DataFrame({"calibrator": ["c"], "max_abs_diff": [1e-9], "ece_diff": [1e-7], "passed": [True]})
    bad = pl.DataFrame({"calibrator": ["c"], "max_abs_diff": [1e-3], "ece_diff": [1e-7], "passed": [False]})
    assert G.calibration_parity_gate(ok)[0].passed
    assert not G.calibration_parity_gate(bad)[0].passed


def _cmp(mde, lo, hi):
    return pl.DataFrame(
        [
            {
                "control": "base",
                "test": "t",
                "slice": "all",
                "metric": "ndcg_10",
                "delta": 0.01,
                "ci_low": lo,
                "ci_high": hi,
                "p_value": 0.1,
                "p_holm": 0.1,
                "n": 500,
                "mde": mde,
                "status": "ok",
                "reason": None,
            }
        ]
    )


def test_power_and_ci_width():
    power, width = G.decision_gates(_cmp(0.005, 0.0, 0.02), {"t": ("ndcg_10", "all", 0.008)})
    assert power.passed and width.passed
    power, width = G.decision_gates(_cmp(0.02, -0.03, 0.04), {"t": ("ndcg_10", "all", 0.008)})
    assert not power.passed and not width.passed


@pytest.mark.parametrize(
    "fn", [G.pool_gate, G.file_credit_gate, G.tail_gate, G.flatline_gate, G.ece_gate, G.calibration_parity_gate]
)
def test_missing_or_empty_input_fails_with_reason(fn):
    for empty in (None, pl.DataFrame()):
        (g,) = fn(empty)
        assert not g.passed and "missing" in g.reason


def test_missing_decision_input_fails():
    res = G.decision_gates(None, {"t": ("ndcg_10", "all", 0.01)})
    assert all(not g.passed for g in res)


def test_parity_gate_sim_vs_http_ingestion():
    import tempfile
    from pathlib import Path

    from lens_core.collect.rawruns import write_raw_run
    from lens_core.common.settings import load_config
    from lens_core.common.systems import baseline
    from lens_core.decide.battery import parity_gate
    from lens_core.ingest.ndjson import ingest
    from lens_core.sim.simulator import Simulator

    cfg = load_config()
    sim = Simulator(cfg.sim.model_copy(update={"queries_per_suite": 5}), seed=cfg.run.seed)
    base = baseline(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "b.ndjson"
        info = write_raw_run(p, sim.run(base, "r", sim.queries, 150.0, cfg.run.k, 0.0))
        agg = pl.from_arrow(ingest([p])[0])
    raw = pl.DataFrame({"system": [base.name], "records": [info["records"]]})
    gates = parity_gate(raw, agg, sim.queries, source="local", baseline=base)
    assert len(gates) == 2 and all(g.passed for g in gates)
    dropped = agg.filter(pl.col("qid") != sim.queries["qid"][0])
    gates = parity_gate(raw, dropped, sim.queries, source="local", baseline=base)
    assert not any(g.passed for g in gates)
