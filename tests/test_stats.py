"""SPEC §5 statistics: parity with scipy/statsmodels, statistical properties, bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as st

from lens_core.common.contracts import COMPARISONS_SCHEMA
from lens_core.stats import compare as S

INTENTS = np.array(["nl", "identifier", "structural"])
SUITE_OF = {"nl": "codesearch_nl", "identifier": "identifier_exact", "structural": "structural"}


def _per_query(
    n: int,
    effect: float = 0.0,
    seed: int = 0,
    metrics=("ndcg_10", "recall_50"),
    noise: float = 0.15,
    systems=("ctrl", "test"),
) -> pl.DataFrame:
    """Paired per-query table: a query difficulty shared by both arms plus arm noise."""
    rng = np.random.default_rng(seed)
    intent = INTENTS[rng.integers(0, 3, n)]
    lang = np.array(["python", "go", "rust"])[rng.integers(0, 3, n)]
    base = rng.random((len(metrics), n))
    frames = []
    for k, sysname in enumerate(systems):
        d = {
            "run_id": "r1",
            "system": sysname,
            "qid": [f"q{i:05d}" for i in range(n)],
            "suite": [SUITE_OF[i] for i in intent],
            "intent": intent,
            "language": lang,
        }
        for j, m in enumerate(metrics):
            d[m] = base[j] + rng.normal(0, noise, n) + (effect if k == 1 else 0.0)
        frames.append(pl.DataFrame(d))
    return pl.concat(frames)


def _mean_diff(x, y, axis=-1):
    return np.mean(y, axis=axis) - np.mean(x, axis=axis)


def _p_tol(p_ours: float, p_scipy: float, b_ours: int, b_scipy: int) -> float:
    """5 sd of the difference of two Monte-Carlo p-values. scipy's two-sided p is
    2·min(p_less, p_greater), so its MC variance is 4·q(1−q)/B with q = p/2."""
    q = min(max(p_scipy / 2, 1e-3), 0.5)
    p = min(max(p_ours, 2e-3), 1.0)
    var = p * (1 - p) / b_ours + 4 * q * (1 - q) / b_scipy
    return 5 * np.sqrt(var) + 5e-4


# ---------------------------------------------------------------------------------------------
# Parity with the reference implementations
# ---------------------------------------------------------------------------------------------
def test_paired_bootstrap_ci_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.2, 80)
    y = x + rng.normal(0.03, 0.15, 80)
    d, lo, hi = S.paired_bootstrap_ci(x, y, b=5000, seed=3)
    ref = st.bootstrap(
        (x, y), _mean_diff, paired=True, vectorized=True, method="percentile", n_resamples=5000, random_state=11
    ).confidence_interval
    se = np.std(y - x, ddof=1) / np.sqrt(x.size)
    assert d[0] == pytest.approx(np.mean(y - x), abs=1e-15)
    # Monte-Carlo error of a 2.5% percentile with B = 5000 is ~0.04 se per estimate.
    assert abs(lo[0] - ref.low) < 0.25 * se
    assert abs(hi[0] - ref.high) < 0.25 * se


def test_compare_ci_and_p_match_scipy_overall_and_in_a_slice():
    pq = _per_query(300, effect=0.02, seed=4, metrics=("ndcg_10",))
    out = S.compare(pq, "ctrl", "test", ["ndcg_10"], b_ci=4000, b_perm=6000, seed=9)
    wide = pq.pivot(on="system", index=["qid", "intent"], values="ndcg_10").sort("qid")
    for slice_name, sub in [("all", wide), ("intent=nl", wide.filter(pl.col("intent") == "nl"))]:
        x, y = sub["ctrl"].to_numpy(), sub["test"].to_numpy()
        row = out.filter(pl.col("slice") == slice_name).row(0, named=True)
        assert row["n"] == x.size
        assert row["delta"] == pytest.approx(np.mean(y - x), abs=1e-12)
        ci = st.bootstrap(
            (x, y), _mean_diff, paired=True, vectorized=True, method="percentile", n_resamples=4000, random_state=5
        ).confidence_interval
        se = np.std(y - x, ddof=1) / np.sqrt(x.size)
        assert abs(row["ci_low"] - ci.low) < 0.25 * se, slice_name
        assert abs(row["ci_high"] - ci.high) < 0.25 * se, slice_name
        pt = st.permutation_test(
            (x, y), _mean_diff, permutation_type="samples", vectorized=True, n_resamples=6000, random_state=5
        ).pvalue
        assert abs(row["p_value"] - pt) < _p_tol(row["p_value"], pt, 6000, 6000), (slice_name, row["p_value"], pt)


def test_sign_flip_pvalue_matches_scipy_permutation_test():
    rng = np.random.default_rng(2)
    rows = [rng.normal(mu, 1.0, 40) for mu in (0.0, 0.25, 0.45)]
    ours = S.sign_flip_pvalue(np.stack(rows), b=20000, seed=1)
    for d, p in zip(rows, ours):
        ref = st.permutation_test(
            (np.zeros_like(d), d),
            _mean_diff,
            permutation_type="samples",
            vectorized=True,
            n_resamples=20000,
            random_state=3,
        ).pvalue
        assert abs(p - ref) < _p_tol(p, ref, 20000, 20000), (p, ref)


def test_sign_flip_counts_ties_of_discrete_metrics():
    # success@k differences are in {-1, 0, 1}: the identity flip ties with T_obs exactly and
    # must count; with all flips enumerable the p-value is exact up to MC error.
    d = np.array([1.0, 1.0, -1.0, 0.0, 1.0, 0.0])
    p = S.sign_flip_pvalue(d, b=40000, seed=0)[0]
    signs = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T  # 4 non-zero entries
    t = np.abs(signs @ np.array([1.0, 1.0, -1.0, 1.0]))
    exact = np.mean(t >= 2.0)
    assert abs(p - exact) < 0.01
    assert S.sign_flip_pvalue(np.zeros((1, 30)), b=500, seed=0)[0] == 1.0


def test_holm_equals_statsmodels_exactly():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(3)
    cases = [
        rng.random(50) ** 3,
        np.array([0.01, 0.01, 0.04, 0.04, 1.0, 0.0002]),
        np.array([0.5]),
        rng.random(7) * 0.05,
        np.array([1.0, 1.0, 0.9]),
    ]
    for p in cases:
        np.testing.assert_array_equal(S.holm(p), multipletests(p, method="holm")[1])
    out = S.holm(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(out[1]) and np.array_equal(out[[0, 2]], multipletests([0.01, 0.02], method="holm")[1])


def test_compare_applies_holm_across_the_whole_decision():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    pq = _per_query(200, effect=0.02, seed=5)
    out = S.compare(pq, "ctrl", "test", ["ndcg_10", "recall_50"], b_ci=300, b_perm=2000, seed=1)
    # a slice with the same queries as an earlier one (here every suite has one intent) is an
    # alias, outside the family, with its first slice's numbers
    alias = out["reason"].fill_null("").str.contains("alias of slice")
    tested = out.filter(pl.col("p_value").is_not_null() & ~alias)
    assert out.filter(alias)["slice"].str.starts_with("suite=").all() and out.filter(alias).height > 0
    assert tested.height == out.height - out.filter(alias).height > 10
    np.testing.assert_array_equal(
        tested["p_holm"].to_numpy(), multipletests(tested["p_value"].to_numpy(), method="holm")[1]
    )
    everything = S.compare(pq, "ctrl", "test", ["ndcg_10", "recall_50"], b_ci=300, b_perm=2000, seed=1, aliases="none")
    fam = everything.filter(pl.col("p_value").is_not_null())
    assert fam.height == out.height
    np.testing.assert_array_equal(fam["p_holm"].to_numpy(), multipletests(fam["p_value"].to_numpy(), method="holm")[1])


def test_mde_formulas_and_power():
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert S.mde(2.0, 100, dist="z") == pytest.approx(z * 2.0 / 10.0)
    t_small, t_big = S.mde(1.0, 12), S.mde(1.0, 100_000)
    assert t_small > S.mde(1.0, 12, dist="z")
    assert t_big == pytest.approx(S.mde(1.0, 100_000, dist="z"), rel=1e-4)
    assert np.isnan(S.mde(1.0, 1))
    # An effect of exactly the MDE is detected ~80% of the time (sign-flip test, n = 50).
    n, reps = 50, 400
    eff = S.mde(1.0, n)
    rng = np.random.default_rng(6)
    p = S.sign_flip_pvalue(rng.normal(eff, 1.0, (reps, n)), b=1000, seed=2)
    power = np.mean(p < 0.05)
    assert 0.72 <= power <= 0.88, power


# ---------------------------------------------------------------------------------------------
# Statistical properties
# ---------------------------------------------------------------------------------------------
def test_aa_false_positive_rate_is_about_alpha_over_200_seeds():
    hits, covered = 0, 0
    for seed in range(200):
        pq = _per_query(60, effect=0.0, seed=1000 + seed, metrics=("ndcg_10",))
        row = S.compare(pq, "ctrl", "test", ["ndcg_10"], slices=("all",), b_ci=400, b_perm=1000, seed=seed).row(
            0, named=True
        )
        hits += row["p_value"] < 0.05
        covered += row["ci_low"] <= 0.0 <= row["ci_high"]
    # Binomial(200, 0.05): mean 10, sd 3.1; [2, 20] is beyond ±3 sd.
    assert 2 <= hits <= 20, hits
    assert 170 <= covered <= 200, covered  # percentile CIs are slightly narrow at n = 60


def test_planted_effect_is_found_with_its_size():
    pq = _per_query(800, effect=0.03, seed=7, noise=0.08)  # se of the delta ~0.004
    out = S.compare(
        pq, "ctrl", "test", ["ndcg_10", "recall_50"], b_ci=2000, b_perm=10000, seed=3, needed_effect={"ndcg_10": 0.02}
    )
    for m in ("ndcg_10", "recall_50"):
        row = out.filter((pl.col("slice") == "all") & (pl.col("metric") == m)).row(0, named=True)
        assert row["status"] == "ok"
        assert row["p_holm"] < 0.01
        assert row["ci_low"] <= 0.03 <= row["ci_high"]
        assert row["delta"] == pytest.approx(0.03, abs=0.012)  # 3 se
        assert row["ci_high"] - row["ci_low"] < 0.03
    nd = out.filter((pl.col("slice") == "all") & (pl.col("metric") == "ndcg_10")).row(0, named=True)
    assert nd["needed_effect"] == 0.02 and nd["power_ok"] is (nd["mde"] <= 0.02)
    assert out.filter(pl.col("metric") == "recall_50")["power_ok"].null_count() == out.height // 2


def test_output_columns_slices_and_determinism():
    pq = _per_query(150, effect=0.01, seed=8)
    a = S.compare(pq, "ctrl", "test", ["ndcg_10"], b_ci=200, b_perm=500, seed=42)
    b = S.compare(pq, "ctrl", "test", ["ndcg_10"], b_ci=200, b_perm=500, seed=42)
    c = S.compare(pq, "ctrl", "test", ["ndcg_10"], b_ci=200, b_perm=500, seed=43)
    assert a.columns[: len(COMPARISONS_SCHEMA)] == COMPARISONS_SCHEMA.names
    assert a.columns[len(COMPARISONS_SCHEMA) :][:6] == ["n", "sd_diff", "mde", "seed", "status", "reason"]
    assert a.equals(b) and not a.equals(c)
    assert set(a["seed"]) == {42}
    assert a["slice"].to_list() == [
        "all",
        "intent=identifier",
        "intent=nl",
        "intent=structural",
        "language=go",
        "language=python",
        "language=rust",
        "suite=codesearch_nl",
        "suite=identifier_exact",
        "suite=structural",
    ]
    # a slice's n is the count of its paired qids; the dimension's slices partition `all`
    assert a.filter(pl.col("slice").str.starts_with("language="))["n"].sum() == 150
    # the table writes to Parquet with the contract's types
    tbl = a.select(COMPARISONS_SCHEMA.names).to_arrow()
    assert tbl.cast(COMPARISONS_SCHEMA).schema.equals(COMPARISONS_SCHEMA)


def test_compare_many_derives_and_records_one_seed_per_decision():
    pq = pl.concat(
        [
            _per_query(80, seed=9, metrics=("ndcg_10",), systems=("base", "v1")),
            _per_query(80, seed=9, metrics=("ndcg_10",), systems=("base", "v2")).filter(pl.col("system") == "v2"),
        ]
    )
    out = S.compare_many(
        pq, [("base", "v1"), ("base", "v2")], ["ndcg_10"], base_seed=7, slices=("all",), b_ci=200, b_perm=500
    )
    seeds = dict(zip(out["test"], out["seed"]))
    assert seeds["v1"] == S.decision_seed(7, "base", "v1") != seeds["v2"] == S.decision_seed(7, "base", "v2")
    assert S.decision_seed(7, "base", "v1") != S.decision_seed(8, "base", "v1")
    # Holm is per decision: each decision's p_holm equals its own single p here
    assert out["p_holm"].to_list() == out["p_value"].to_list()


def test_chunking_bounds_memory_without_changing_the_answer(monkeypatch):
    pq = _per_query(400, effect=0.015, seed=10, metrics=("ndcg_10",))
    ref = S.compare(pq, "ctrl", "test", ["ndcg_10"], slices=("all",), b_ci=3000, b_perm=6000, seed=1)
    monkeypatch.setattr(S, "CHUNK_ELEMS", 5_000)  # 12 rows per chunk
    small = S.compare(pq, "ctrl", "test", ["ndcg_10"], slices=("all",), b_ci=3000, b_perm=6000, seed=1)
    r, s = ref.row(0, named=True), small.row(0, named=True)
    se = r["sd_diff"] / np.sqrt(400)
    assert abs(r["ci_low"] - s["ci_low"]) < 0.25 * se and abs(r["ci_high"] - s["ci_high"]) < 0.25 * se
    assert abs(r["p_value"] - s["p_value"]) < 5 * np.sqrt(2 * r["p_value"] / 6000) + 1e-3


# ---------------------------------------------------------------------------------------------
# Bad input: clear results or clear errors, never a crash or a silent NaN
# ---------------------------------------------------------------------------------------------
def test_too_few_queries_in_a_slice_is_insufficient_not_nan():
    pq = _per_query(30, seed=11, metrics=("ndcg_10",))
    out = S.compare(pq, "ctrl", "test", ["ndcg_10"], slices=("all", "language"), b_ci=200, b_perm=500, seed=0, min_n=12)
    small = out.filter(pl.col("n") < 12)
    assert small.height > 0
    assert set(small["status"]) == {"insufficient_n"}
    assert small["ci_low"].null_count() == small.height and small["p_holm"].null_count() == small.height
    assert all("min_n 12" in r for r in small["reason"])
    # missing values are nulls with a reason, never NaN
    assert out.select(pl.selectors.float().is_nan().any()).to_numpy().sum() == 0


def test_no_overlapping_qids():
    a = _per_query(20, seed=12, metrics=("ndcg_10",)).filter(pl.col("system") == "ctrl")
    b = a.with_columns(system=pl.lit("test"), qid=pl.col("qid") + "_other")
    out = S.compare(pl.concat([a, b]), "ctrl", "test", ["ndcg_10"], seed=0)
    assert out.height == 1
    row = out.row(0, named=True)
    assert row["status"] == "no_overlap" and row["n"] == 0 and row["delta"] is None
    assert "ctrl" in row["reason"] and "20 qids" in row["reason"]


def test_zero_variance_gives_exact_degenerate_results():
    pq = _per_query(40, seed=13, metrics=("ndcg_10", "success_1"))
    pq = pq.with_columns(success_1=pl.lit(0.0))  # constant in both arms
    shifted = pq.with_columns(ndcg_10=pl.when(pl.col("system") == "test").then(0.7).otherwise(0.6))  # constant shift
    out = S.compare(shifted, "ctrl", "test", ["ndcg_10", "success_1"], slices=("all",), b_ci=300, b_perm=2000, seed=0)
    z = out.filter(pl.col("metric") == "success_1").row(0, named=True)
    assert z["status"] == "zero_variance" and z["delta"] == 0.0
    assert (z["ci_low"], z["ci_high"], z["p_value"]) == (0.0, 0.0, 1.0)
    assert z["sd_diff"] == 0.0 and z["mde"] == 0.0
    s = out.filter(pl.col("metric") == "ndcg_10").row(0, named=True)
    assert s["status"] == "zero_variance"
    assert s["ci_low"] == s["ci_high"] == s["delta"] == pytest.approx(0.1)
    assert s["p_value"] < 0.01  # a constant +0.1 on 40 queries is a real shift


def test_nan_metrics_raise_by_default_and_are_counted_with_omit():
    pq = _per_query(50, seed=14, metrics=("ndcg_10", "recall_50"))
    bad = pq.with_columns(
        ndcg_10=pl.when((pl.col("system") == "test") & pl.col("qid").is_in(["q00001", "q00002"]))
        .then(float("nan"))
        .otherwise(pl.col("ndcg_10"))
    )
    with pytest.raises(ValueError, match=r"system 'test', metric 'ndcg_10': 2 qid\(s\)"):
        S.compare(bad, "ctrl", "test", ["ndcg_10", "recall_50"], seed=0)
    out = S.compare(
        bad, "ctrl", "test", ["ndcg_10", "recall_50"], slices=("all",), b_ci=200, b_perm=500, seed=0, nan_policy="omit"
    )
    assert out["n"].to_list() == [48, 48]
    assert all("excluded 2 paired qid(s)" in r and "test.ndcg_10: 2" in r for r in out["reason"])
    assert out["delta"].is_nan().sum() == 0


def test_wiring_errors_name_the_problem():
    pq = _per_query(20, seed=15, metrics=("ndcg_10",))
    with pytest.raises(ValueError, match="system 'nope' has no rows"):
        S.compare(pq, "ctrl", "nope", ["ndcg_10"])
    with pytest.raises(ValueError, match="missing column.*mrr_10"):
        S.compare(pq, "ctrl", "test", ["mrr_10"])
    with pytest.raises(ValueError, match="appear more than once"):
        S.compare(pl.concat([pq, pq.filter(pl.col("system") == "test").head(2)]), "ctrl", "test", ["ndcg_10"])
    flipped = pq.with_columns(
        intent=pl.when((pl.col("system") == "test") & (pl.col("qid") == "q00003"))
        .then(pl.lit("other"))
        .otherwise(pl.col("intent"))
    )
    with pytest.raises(ValueError, match="different 'intent'.*q00003"):
        S.compare(flipped, "ctrl", "test", ["ndcg_10"])
    with pytest.raises(ValueError, match="unknown slice"):
        S.compare(pq, "ctrl", "test", ["ndcg_10"], slices=("all", "repo"))
    with pytest.raises(ValueError, match="non-finite"):
        S.sign_flip_pvalue([[0.1, float("nan")]])
