"""Canary ladder (SPEC §9): bucketing, A/A first, window gates, tripwire, outputs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lens_core.calibrate.calibration import adaptive_ece_noise_floor
from lens_core.decide.canary import (
    ADVANCE,
    COMPLETE,
    DECISIONS_SCHEMA,
    HOLD,
    INSUFFICIENT,
    REVERT,
    STEPS_SCHEMA,
    WINDOWS_SCHEMA,
    CanaryConfig,
    CanaryStream,
    repo_bucket,
    repo_buckets,
    routed_to_test,
    run_ladder,
)

W = 200  # queries per window (the default)


def _arms(
    n: int,
    seed: int,
    repos: int = 100,
    effect: float = 0.0,
    noise: float = 0.05,
    conf_shift: float = 0.0,
    calib_ms: float = 0.2,
    bad_windows: dict | None = None,
    t0_ms: int | None = None,
    step_ms: int = 1000,
) -> pl.DataFrame:
    """Both arms of n queries. `bad_windows`: {window index: {"sla": Δ, "calib": ms, "conf": Δ}}."""
    rng = np.random.default_rng(seed)
    qid = [f"q{seed}_{i:05d}" for i in range(n)]
    repo = [f"repo{r:03d}" for r in rng.integers(0, repos, n)]
    c_sla = rng.uniform(0.3, 0.9, n)
    t_sla = c_sla + effect + rng.normal(0, noise, n)
    c_conf = rng.uniform(0.2, 0.6, n)
    t_conf = c_conf + conf_shift + rng.normal(0, 0.005, n)
    c_cal = rng.uniform(0.05, 0.3, n)
    t_cal = np.full(n, calib_ms) * rng.uniform(0.5, 1.0, n)
    win = np.arange(n) // W
    for k, bad in (bad_windows or {}).items():
        m = win == k
        t_sla[m] += bad.get("sla", 0.0)
        t_conf[m] += bad.get("conf", 0.0)
        if "calib" in bad:
            t_cal[m] = bad["calib"]
    lat = rng.gamma(4, 10, n)
    base = {
        "qid": qid * 2,
        "repo": repo * 2,
        "arm": ["control"] * n + ["test"] * n,
        "sla_recall_50": np.concatenate([c_sla, t_sla]),
        "lat_ms": np.concatenate([lat, lat * 1.01]),
        "confidence": np.concatenate([c_conf, t_conf]),
        "calib_ms": np.concatenate([c_cal, t_cal]),
    }
    if t0_ms is not None:
        ts = t0_ms + np.arange(n) * step_ms
        base["ts"] = np.concatenate([ts, ts])
    return pl.DataFrame(base)


def _labels(queries: pl.DataFrame, per_query: int, seed: int, miscal: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t = queries.filter(pl.col("arm") == "test")["qid"].to_list()
    qid = np.repeat(t, per_query)
    conf = rng.beta(0.6, 2.4, qid.size)
    label = (rng.uniform(size=qid.size) < np.clip(conf + miscal, 0, 1)).astype(np.int64)
    return pl.DataFrame({"qid": qid, "arm": ["test"] * qid.size, "confidence": conf, "label": label})


NO_LABELS = pl.DataFrame(schema={"qid": pl.String, "arm": pl.String, "confidence": pl.Float64, "label": pl.Int64})


def _stream(ab: pl.DataFrame, aa: pl.DataFrame | None = None, labels=NO_LABELS, aa_labels=NO_LABELS) -> CanaryStream:
    if aa is None:
        aa = _arms(3 * W, seed=99)
    return CanaryStream(queries=ab, labels=labels, aa_queries=aa, aa_labels=aa_labels)


def _actions(res) -> list[tuple[str, int, str]]:
    return list(zip(res.decisions["phase"], res.decisions["step"], res.decisions["action"]))


# ---------------------------------------------------------------------------------------------
# Bucketing
# ---------------------------------------------------------------------------------------------
def test_bucket_is_documented_hash_and_stable():
    import hashlib

    for r in ("repo00", "github.com/acme/widgets", "ünïcode"):
        h = hashlib.sha256(r.encode()).digest()
        assert repo_bucket(r) == int.from_bytes(h[:8], "big") % 100
    # pinned: a change of hash would silently reshuffle production traffic
    assert [repo_bucket(f"repo{i:02d}") for i in range(4)] == [repo_bucket(f"repo{i:02d}") for i in range(4)]
    assert repo_buckets(["repo00", "repo01", "repo00"]).tolist() == [
        repo_bucket("repo00"),
        repo_bucket("repo01"),
        repo_bucket("repo00"),
    ]


def test_bucketing_is_proportional_and_nested():
    repos = [f"org{i}/repo{i}" for i in range(20_000)]
    b = repo_buckets(repos)
    assert b.min() >= 0 and b.max() <= 99
    prev = np.zeros(len(repos), dtype=bool)
    for pct in (5, 25, 50, 100):
        m = routed_to_test(repos, pct)
        assert abs(m.mean() - pct / 100) < 0.01, (pct, m.mean())
        assert (m | ~prev).all()  # a repo in the test arm stays there at a higher step
        prev = m


# ---------------------------------------------------------------------------------------------
# Ladder
# ---------------------------------------------------------------------------------------------
def test_all_green_completes_to_100_after_aa():
    res = run_ladder(_stream(_arms(10 * W, seed=1, effect=0.02)))
    acts = _actions(res)
    assert acts[0] == ("aa", 0, ADVANCE)  # A/A first
    assert [a for a in acts if a[2] != HOLD] == [
        ("aa", 0, ADVANCE),
        ("ab", 1, ADVANCE),
        ("ab", 2, ADVANCE),
        ("ab", 3, ADVANCE),
        ("ab", 4, COMPLETE),
    ]
    assert res.completed and not res.reverted and res.final_pct == 100 and res.aa_passed
    assert res.steps["pct"].to_list() == [100, 5, 25, 50, 100]
    assert res.steps["decision"].to_list() == [ADVANCE, ADVANCE, ADVANCE, ADVANCE, COMPLETE]
    ab = res.windows.filter(pl.col("phase") == "ab")
    assert not ab["red"].any()
    # the split follows the step: more test traffic at each step
    n_test = ab.group_by("step").agg(pl.col("n_test").mean()).sort("step")["n_test"].to_list()
    assert n_test == sorted(n_test) and ab.filter(pl.col("pct") == 100)["n_control"].sum() == 0
    assert res.noise_floor["aa_windows"] == 3 and res.noise_floor["sd_q"] > 0


def test_two_consecutive_red_windows_revert_and_page_once():
    calls = []
    ab = _arms(10 * W, seed=2, effect=-0.2)  # the test arm loses SLA-Recall everywhere
    res = run_ladder(_stream(ab), page=lambda s, d: calls.append((s, d)))
    assert res.reverted and res.final_pct == 0 and not res.completed
    ab_w = res.windows.filter(pl.col("phase") == "ab")
    assert ab_w.height == 2 and ab_w["red"].to_list() == [True, True]  # nothing judged after the revert
    assert _actions(res)[-2:] == [("ab", 1, HOLD), ("ab", 1, REVERT)]
    rev = res.decisions.filter(pl.col("action") == REVERT)
    assert rev.height == 1 and rev["from_pct"][0] == 5 and rev["to_pct"][0] == 0 and rev["paged"][0]
    assert "SLA-Recall" in rev["reason"][0]
    assert len(calls) == 1 and "reverted to 0%" in calls[0][0] and calls[0][1]["pct"] == 5
    assert res.steps["decision"].to_list() == [ADVANCE, REVERT]


def test_one_red_then_green_does_not_revert():
    # window 1 (the 2nd A/B window, at 5%) regresses; window 2 is fine again
    ab = _arms(10 * W, seed=1, effect=0.02, bad_windows={1: {"sla": -0.5}})
    calls = []
    res = run_ladder(_stream(ab), page=lambda s, d: calls.append(s))
    w = res.windows.filter(pl.col("phase") == "ab")
    assert w["red"].to_list()[:3] == [False, True, False]
    assert not res.reverted and res.completed and calls == []
    hold = res.decisions.filter((pl.col("action") == HOLD) & (pl.col("window") == 1))
    assert hold.height == 1 and "1 more consecutive red window(s) revert" in hold["reason"][0]


def test_red_green_red_does_not_revert_but_red_red_at_later_step_does():
    # windows: 0 green, 1 red, 2 green -> advance to 25% at window 2; 3, 4 red -> revert at 25%
    ab = _arms(10 * W, seed=1, effect=0.02, bad_windows={1: {"sla": -0.5}, 3: {"calib": 2.5}, 4: {"calib": 2.5}})
    calls = []
    res = run_ladder(_stream(ab), page=lambda s, d: calls.append(d))
    assert res.reverted and res.final_pct == 0
    rev = res.decisions.filter(pl.col("action") == REVERT)
    assert rev["window"].to_list() == [4] and rev["from_pct"].to_list() == [25]
    assert "calibrator p99" in rev["reason"][0]
    w = res.windows.filter(pl.col("window") == 3, pl.col("phase") == "ab")
    assert w["calib_p99_ms"][0] >= 1.0 and w["calib_p99_passed"][0] is False
    assert len(calls) == 1 and calls[0]["windows"] == [3, 4]


def test_confidence_shift_gate_either_direction():
    res = run_ladder(_stream(_arms(10 * W, seed=1, effect=0.02, conf_shift=-0.05)))
    w = res.windows.filter(pl.col("phase") == "ab")
    assert res.reverted and not w["conf_shift_passed"][0] and w["conf_shift"][0] < -0.02
    assert w["conf_shift_threshold"][0] == 0.02


def test_page_failure_does_not_lose_the_revert():
    def broken(summary, details):
        raise ConnectionError("pager down")

    res = run_ladder(_stream(_arms(10 * W, seed=2, effect=-0.2)), page=broken)
    rev = res.decisions.filter(pl.col("action") == REVERT)
    assert res.reverted and rev.height == 1 and rev["paged"][0] is False


def test_stream_exhausted_holds_at_current_step():
    res = run_ladder(_stream(_arms(3 * W + 50, seed=1, effect=0.02)))
    assert not res.completed and not res.reverted and res.final_pct == 25
    last = res.decisions.row(-1, named=True)
    assert last["action"] == HOLD and "stream exhausted" in last["reason"]
    # the partial last window (50 queries) is not judged
    assert res.windows.filter(pl.col("phase") == "ab").height == 3


def test_aa_broken_setup_blocks_the_ladder():
    aa = _arms(3 * W, seed=98, effect=-0.08, noise=0.02)  # "identical" arms that differ: broken setup
    calls = []
    res = run_ladder(_stream(_arms(10 * W, seed=1, effect=0.02), aa=aa), page=lambda s, d: calls.append(s))
    assert not res.aa_passed and res.final_pct == 0 and not res.reverted and calls == []
    assert _actions(res) == [("aa", 0, HOLD)]
    assert "A/A" in res.decisions["reason"][0] and res.windows.filter(pl.col("phase") == "ab").height == 0
    tost = res.noise_floor["aa_tost"]["sla_recall_50"]
    assert not tost["equivalent"] and tost["beyond"] and tost["margin"] == 0.05
    assert "p_lower" in res.decisions["reason"][0] and "±0.05" in res.decisions["reason"][0]


def test_aa_noise_floor_widens_sla_tolerance():
    # a -0.005 SLA-Recall shift, far inside the A/A noise (per-query sd 0.08): the A/A-widened
    # gate lets it through; without the tolerance every window is red and the 5% step reverts
    ab = _arms(10 * W, seed=1, effect=-0.005, noise=0.002)
    aa = _arms(3 * W, seed=97, noise=0.08)
    widened = run_ladder(_stream(ab, aa=aa))
    strict = run_ladder(_stream(ab, aa=aa), CanaryConfig(sla_tolerance="none"))
    assert widened.completed and not widened.reverted
    assert strict.reverted and strict.decisions.filter(pl.col("action") == REVERT)["from_pct"].to_list() == [5]
    w = widened.windows.filter(pl.col("phase") == "ab")
    assert (w["sla_recall_threshold"] < 0).all()
    # tol = z·sd_q/√n_test: it shrinks as the test arm's traffic grows
    thr = w.group_by("pct").agg(pl.col("sla_recall_threshold").mean()).sort("pct")["sla_recall_threshold"].to_list()
    assert thr == sorted(thr)
    sd_q = widened.noise_floor["sd_q"]
    r = w.row(0, named=True)
    assert r["sla_recall_threshold"] == pytest.approx(-1.96 * sd_q / np.sqrt(r["n_test"]))
    assert strict.windows.filter(pl.col("phase") == "ab")["sla_recall_threshold"].to_list()[0] == 0.0


def test_insufficient_test_traffic_holds():
    # 5% step with repos whose buckets are all >= 5: no test traffic, never green, never red
    repos = [r for r in (f"repo{i:03d}" for i in range(400)) if repo_bucket(r) >= 5][:50]
    ab = _arms(4 * W, seed=3, effect=0.02)
    mapping = {f"repo{i:03d}": repos[i % len(repos)] for i in range(100)}
    ab = ab.with_columns(pl.col("repo").replace(mapping))
    res = run_ladder(_stream(ab))
    w = res.windows.filter(pl.col("phase") == "ab")
    assert (w["status"] == INSUFFICIENT).all() and (w["n_test"] == 0).all()
    assert res.final_pct == 5 and not res.reverted and not res.completed


# ---------------------------------------------------------------------------------------------
# ECE gate with its noise floor
# ---------------------------------------------------------------------------------------------
def _ece_run(miscal: float, per_query: int):
    cfg = CanaryConfig(ladder=(100,), windows_per_step=1, aa_pct=100)
    ab = _arms(2 * W, seed=5, effect=0.02)
    return run_ladder(_stream(ab, labels=_labels(ab, per_query, seed=6, miscal=miscal)), cfg)


def test_ece_gate_pass_fail_and_insufficient():
    ok = _ece_run(0.0, per_query=100).windows.filter(pl.col("phase") == "ab").row(0, named=True)
    assert ok["ece_labels"] == 20_000 and ok["ece_noise_floor"] <= 0.01
    assert ok["ece_status"] == "pass" and ok["ece"] <= 0.01 and not ok["red"]
    # the query-resampled floor (issue 17) uses the observed label rates: a +0.08 miscalibrated
    # window's floor at 20,000 labels sits at ~0.010, so the failing case gets 40,000
    bad_res = _ece_run(0.08, per_query=200)
    bad = bad_res.windows.filter(pl.col("phase") == "ab").row(0, named=True)
    assert bad["ece_status"] == "fail" and bad["ece"] > 0.01 and bad["red"] and bad["ece_passed"] is False
    few = _ece_run(0.08, per_query=3).windows.filter(pl.col("phase") == "ab").row(0, named=True)
    assert few["ece_status"] == INSUFFICIENT and few["ece_passed"] is None and not few["red"]
    assert few["ece_noise_floor"] > 0.01


def test_adaptive_noise_floor_shrinks_with_labels():
    rng = np.random.default_rng(0)
    f1 = adaptive_ece_noise_floor(rng.beta(0.6, 2.4, 1000))
    f2 = adaptive_ece_noise_floor(rng.beta(0.6, 2.4, 16000))
    assert f2 < f1 / 3 and f2 < 0.01 < f1


# ---------------------------------------------------------------------------------------------
# Windows by time, outputs, bad input
# ---------------------------------------------------------------------------------------------
def test_time_windows():
    cfg = CanaryConfig(window_minutes=15)
    # one query every 4.5 s -> 200 queries per 15 minutes
    ab = _arms(10 * W, seed=1, effect=0.02, t0_ms=1_760_000_000_000, step_ms=4500)
    aa = _arms(3 * W + 10, seed=99, t0_ms=1_750_000_000_000, step_ms=4500)
    res = run_ladder(_stream(ab, aa=aa), cfg)
    w = res.windows.filter(pl.col("phase") == "ab")
    assert ((w["end"] - w["start"]) == 15 * 60_000).all()
    assert ((w["n_control"] + w["n_test"]) == 200).all()
    assert res.completed and res.final_pct == 100
    # Datetime timestamps give the same windows
    ab_dt = ab.with_columns(pl.from_epoch(pl.col("ts"), time_unit="ms").alias("ts"))
    aa_dt = aa.with_columns(pl.from_epoch(pl.col("ts"), time_unit="ms").alias("ts"))
    res_dt = run_ladder(_stream(ab_dt, aa=aa_dt), cfg)
    assert res_dt.windows.equals(res.windows)


def test_output_columns():
    res = run_ladder(_stream(_arms(10 * W, seed=2, effect=-0.2)), page=lambda s, d: None)
    assert res.steps.schema == pl.Schema(STEPS_SCHEMA)
    assert res.windows.schema == pl.Schema(WINDOWS_SCHEMA)
    assert res.decisions.schema == pl.Schema(DECISIONS_SCHEMA)
    for gate in ("calib_p99", "conf_shift", "sla_recall"):
        assert {f"{gate}_threshold", f"{gate}_passed"} <= set(res.windows.columns)
    assert res.decisions["seq"].to_list() == list(range(res.decisions.height))


def test_deterministic():
    s = _stream(_arms(10 * W, seed=1, effect=0.02), labels=NO_LABELS)
    a, b = run_ladder(s), run_ladder(s)
    assert a.windows.equals(b.windows) and a.decisions.equals(b.decisions)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda q: q.drop("calib_ms"), "missing column.*calib_ms"),
        (lambda q: q.filter(~((pl.col("qid") == "q1_00007") & (pl.col("arm") == "test"))), "q1_00007.*no test row"),
        (
            lambda q: q.with_columns(
                pl.when(pl.col("qid") == "q1_00003")
                .then(float("nan"))
                .otherwise(pl.col("sla_recall_50"))
                .alias("sla_recall_50")
            ),
            "sla_recall_50.*q1_00003",
        ),
        (
            lambda q: q.with_columns(
                pl.when(pl.col("qid") == "q1_00004").then(pl.lit("b")).otherwise(pl.col("arm")).alias("arm")
            ),
            "arm.*'b'",
        ),
        (lambda q: pl.concat([q, q.head(1)]), "q1_00000.*2 rows"),
    ],
)
def test_bad_input_names_the_problem(mutate, match):
    with pytest.raises(ValueError, match=match):
        run_ladder(_stream(mutate(_arms(4 * W, seed=1))))


def test_bad_config_and_missing_labels():
    with pytest.raises(ValueError, match="ladder"):
        CanaryConfig(ladder=(25, 5))
    with pytest.raises(ValueError, match="unknown key"):
        CanaryConfig.from_mapping({"ladderr": [5]})
    assert CanaryConfig.from_mapping({"ladder": [10, 100], "window_queries": 50}).ladder == (10, 100)
    with pytest.raises(ValueError, match="labels: required"):
        run_ladder(CanaryStream(_arms(4 * W, seed=1), None, _arms(3 * W, seed=99), NO_LABELS))
    with pytest.raises(ValueError, match="A/A canary: 1 judged window"):
        run_ladder(_stream(_arms(4 * W, seed=1), aa=_arms(W + 5, seed=99)))
    with pytest.raises(ValueError, match="no ts column"):
        run_ladder(_stream(_arms(4 * W, seed=1)), CanaryConfig(window_minutes=15))
