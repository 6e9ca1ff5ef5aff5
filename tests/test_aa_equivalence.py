"""Issue 17, items 3 and 4: the A/A as an equivalence test (TOST), the A/A twin sharing its
baseline's calibrator, the query-resampled ECE noise floor and the ECE gate that blocks only
where calibrated confidence is released."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as st

from lens_core.calibrate.calibration import (
    calibrate,
    null_ece_distribution,
    query_null_ece_distribution,
)
from lens_core.decide.canary import (
    CanaryConfig,
    aa_equivalence,
    aa_equivalence_per_query,
    canary_config,
)
from lens_core.decide.gates import ece_gate
from lens_core.stats.compare import tost_paired


# ---------------------------------------------------------------------------------------------
# tost_paired against scipy
# ---------------------------------------------------------------------------------------------
def _scipy_tost(control: np.ndarray, test: np.ndarray, margin: float) -> tuple[float, float]:
    lo = st.ttest_rel(test, control - margin, alternative="greater").pvalue
    hi = st.ttest_rel(test, control + margin, alternative="less").pvalue
    return float(lo), float(hi)


@pytest.mark.parametrize("shift", [0.0, 0.01, -0.015, 0.02, 0.05])
def test_tost_paired_matches_scipy_ttest_rel(shift):
    rng = np.random.default_rng(3)
    m, n = 4, 250
    control = rng.uniform(0, 1, (m, n))
    test = control + shift + rng.normal(0, 0.08, (m, n)) * np.arange(1, m + 1)[:, None]
    margins = np.array([0.02, 0.01, 0.03, 0.05])
    res = tost_paired(test - control, margins, alpha=0.05)
    for i in range(m):
        p_lo, p_hi = _scipy_tost(control[i], test[i], margins[i])
        assert res["p_lower"][i] == pytest.approx(p_lo, abs=1e-9, rel=0)
        assert res["p_upper"][i] == pytest.approx(p_hi, abs=1e-9, rel=0)
        assert res["p_tost"][i] == pytest.approx(max(p_lo, p_hi), abs=1e-9, rel=0)
        assert bool(res["equivalent"][i]) == (max(p_lo, p_hi) < 0.05)


def test_tost_paired_zero_variance_and_bad_input():
    inside = tost_paired(np.full(20, 0.005), 0.02)
    assert inside["p_lower"][0] == 0.0 and inside["p_upper"][0] == 0.0 and inside["equivalent"][0]
    outside = tost_paired(np.full(20, 0.05), 0.02)
    assert outside["p_upper"][0] == 1.0 and not outside["equivalent"][0] and outside["beyond"][0]
    with pytest.raises(ValueError, match="margins"):
        tost_paired(np.zeros(10), 0.0)
    with pytest.raises(ValueError, match=">= 2"):
        tost_paired(np.zeros(1), 0.02)
    with pytest.raises(ValueError, match="non-finite"):
        tost_paired([0.1, float("nan"), 0.2], 0.02)


# ---------------------------------------------------------------------------------------------
# Synthetic paired data: the rates
# ---------------------------------------------------------------------------------------------
def test_tost_rates_on_synthetic_paired_data():
    """Many synthetic A/A studies at once (rows): identical arms are declared equivalent (false
    alarm <= alpha), a true difference exactly at the margin is declared equivalent at the
    nominal rate alpha (the test's size), a shift beyond the margin is declared broken."""
    rng = np.random.default_rng(17)
    reps, n, sd, margin, alpha = 4000, 400, 0.1, 0.02, 0.05
    noise = rng.normal(0, sd, (reps, n))
    same = tost_paired(noise, margin, alpha)
    assert 1 - same["equivalent"].mean() <= alpha  # identical arms: power ~1 at this n
    at_margin = tost_paired(noise + margin, margin, alpha)
    rate = at_margin["equivalent"].mean()
    ci = st.binomtest(int(at_margin["equivalent"].sum()), reps).proportion_ci(0.95, method="exact")
    assert ci.low <= alpha <= ci.high, (rate, ci)
    beyond = tost_paired(noise + 2.5 * margin, margin, alpha)
    assert beyond["equivalent"].mean() == 0.0 and beyond["beyond"].mean() > 0.99


def test_aa_equivalence_reason_names_both_p_values_and_margin():
    rng = np.random.default_rng(1)
    ok = aa_equivalence({"sla_recall_50": rng.normal(0, 0.05, 600)}, {"sla_recall_50": 0.02}, 0.05)
    assert ok.equivalent and ok.reason.startswith("A/A equivalent")
    bad = aa_equivalence({"sla_recall_50": rng.normal(0.05, 0.05, 600)}, {"sla_recall_50": 0.02}, 0.05)
    assert not bad.equivalent and "BEYOND the margin" in bad.reason
    for word in ("p_lower", "p_upper", "±0.02"):
        assert word in bad.reason
    # a noisy small sample: not shown equivalent (but not significantly beyond either)
    vague = aa_equivalence({"sla_recall_50": rng.normal(0, 0.3, 30)}, {"sla_recall_50": 0.02}, 0.05)
    assert not vague.equivalent and "NOT shown equivalent" in vague.reason


def test_hero_aa_check_on_per_query():
    rng = np.random.default_rng(2)
    n = 800
    qid = [f"q{i:04d}" for i in range(n)]
    base = rng.uniform(0, 1, n)
    rows = {
        "system": ["b"] * n + ["b__aa"] * n,
        "qid": qid * 2,
        "sla_recall_50": np.concatenate([base, base + rng.normal(0, 0.05, n)]),
        "ndcg_10": np.concatenate([base, base + rng.normal(0, 0.05, n)]),
    }
    v = aa_equivalence_per_query(pl.DataFrame(rows), "b", "b__aa", CanaryConfig())
    assert v.equivalent and {r["metric"] for r in v.rows} == {"sla_recall_50", "ndcg_10"}
    rows["ndcg_10"] = np.concatenate([base, base + 0.08 + rng.normal(0, 0.05, n)])
    v = aa_equivalence_per_query(pl.DataFrame(rows), "b", "b__aa", CanaryConfig())
    assert not v.equivalent and "nDCG@10" in v.reason


def test_margins_come_from_config():
    cfg = canary_config()
    assert cfg.aa_sla_margin == 0.05 and cfg.aa_calib_margin_ms == 0.25 and cfg.aa_alpha == 0.05
    with pytest.raises(ValueError, match="equivalence margin"):
        CanaryConfig(aa_sla_margin=0.0)


# ---------------------------------------------------------------------------------------------
# The A/A twin shares its baseline's calibrator
# ---------------------------------------------------------------------------------------------
def _labelled(seed: int = 0, n_q: int = 600, per_q: int = 20) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for system in ("base", "base__aa", "other"):
        qid = np.repeat([f"q{i:04d}" for i in range(n_q)], per_q)
        score = rng.normal(0, 1, qid.size)
        label = (rng.uniform(size=qid.size) < 1 / (1 + np.exp(-(2 * score - 1.5)))).astype(np.int64)
        frames.append(
            pl.DataFrame(
                {
                    "system": system,
                    "qid": qid,
                    "intent": "nl",
                    "language": "python",
                    "score": score,
                    "label": label,
                }
            )
        )
    return pl.concat(frames)


def test_aa_twin_shares_the_baseline_calibrator():
    df = _labelled()
    cals, report = calibrate(df, min_labels=200, shared={"base__aa": "base"})
    assert not any(c.system == "base__aa" for c in cals.calibrators.values())
    grid = np.linspace(-3, 3, 101)
    np.testing.assert_array_equal(
        cals.apply("base__aa", "nl", "python", grid), cals.apply("base", "nl", "python", grid)
    )
    # the sharing survives the JSON export
    back = type(cals).from_json(cals.to_json())
    assert back.for_cell("base__aa", "nl", "python").key == cals.for_cell("base", "nl", "python").key
    twin = report.filter(pl.col("system") == "base__aa").row(0, named=True)
    assert twin["calibrator"] == cals.for_cell("base", "nl", "python").key
    assert "shares the calibrators of 'base'" in twin["reason"]
    # without sharing, identical configs get two differently fitted calibrators
    sep, _ = calibrate(df, min_labels=200)
    assert sep.for_cell("base__aa", "nl", "python").key != sep.for_cell("base", "nl", "python").key
    with pytest.raises(ValueError, match="shared"):
        calibrate(df, shared={"base": "base"})


# ---------------------------------------------------------------------------------------------
# Item 4: the ECE noise floor resamples queries
# ---------------------------------------------------------------------------------------------
def _clustered(n_q: int, per_q: int, tau: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perfectly calibrated on average, but a query's hits share a random effect (tau)."""
    rng = np.random.default_rng(seed)
    q = np.repeat(np.arange(n_q), per_q)
    conf = rng.beta(0.6, 2.4, q.size)
    logit = np.log(conf / (1 - conf)) + rng.normal(0, tau, n_q)[q]
    p = 1 / (1 + np.exp(-logit))
    return conf, (rng.uniform(size=q.size) < p).astype(np.float64), q


def test_query_floor_agrees_with_binomial_for_independent_hits():
    conf, y, q = _clustered(2000, 10, 0.0, seed=4)
    f_q = np.quantile(query_null_ece_distribution(conf, y, q, reps=1000, seed=1), 0.95)
    f_h = np.quantile(null_ece_distribution(conf, reps=1000, seed=1), 0.95)
    assert f_q == pytest.approx(f_h, rel=0.2)


def test_query_floor_widens_for_clustered_hits():
    conf, y, q = _clustered(300, 50, 1.5, seed=5)
    f_q = np.quantile(query_null_ece_distribution(conf, y, q, reps=1000, seed=1), 0.95)
    f_h = np.quantile(null_ece_distribution(conf, reps=1000, seed=1), 0.95)
    assert f_q > 1.5 * f_h
    # the same question for more labels: the floor falls
    f_more = np.quantile(query_null_ece_distribution(conf, y, q, reps=1000, seed=1, n=16 * conf.size), 0.95)
    assert f_more < f_q / 2.5
    with pytest.raises(ValueError, match="query ids"):
        query_null_ece_distribution(conf, y, q[:-1])


# ---------------------------------------------------------------------------------------------
# Item 4: the ECE gate blocks only where calibrated confidence is released
# ---------------------------------------------------------------------------------------------
def _report(ece_value: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "system": ["s"],
            "intent": ["nl"],
            "language": ["python"],
            "ece": [ece_value],
            "labels_needed": [100],
            "status": ["pass" if ece_value <= 0.02 else "fail"],
        }
    )


def test_ece_gate_blocks_by_default_and_warns_when_not_released(lens_config):
    blocking = ece_gate(_report(0.0214))[0]
    assert blocking.blocking and not blocking.passed  # the packaged default: released
    lens_config("calibration:\n  released: false\n")
    warn = ece_gate(_report(0.0214))[0]
    assert not warn.blocking and not warn.passed and warn.value == blocking.value
    assert warn.reason.startswith(blocking.reason) and "not released" in warn.reason
    lens_config("calibration:\n  released: {sim: true, prod: false}\n")
    assert ece_gate(_report(0.0214), source="sim")[0].blocking
    assert not ece_gate(_report(0.0214), source="prod")[0].blocking
    assert ece_gate(_report(0.0214), source="local")[0].blocking  # not named: released
