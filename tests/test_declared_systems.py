"""Declared systems, the cfg_hash gate, CI-judged vs-baseline rules and per-step canary windows
(issue 17). Unit level: config files in tmp_path, simulated tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lens_core.common.settings import load_config
from lens_core.common.systems import SystemConfig, all_systems, cfg_hash, engine_systems, pack_variants
from lens_core.decide.canary import CanaryConfig, CanaryStream, run_ladder, step_window_queries, window_test_queries
from lens_core.decide.gates import cfg_hash_gate, cost_gate, sla_recall_gate
from lens_core.decide.promotion import _judge_vs_baseline
from lens_core.stats.bootstrap import paired_delta_ci

DECL = """\
systems:
  - {name: base, role: baseline, endpoint: "http://a:1", params: {model: v1}, cfg_hash: aaaaaaaaaaaaaaaa}
  - {name: twin, role: aa, endpoint: "http://b:2", params: {model: v1}}
  - {name: cand, role: candidate, pack: lexical_pack_a, params: {model: v2, k1: 1.4}, repo: acme, path_prefix: src/}
  - {name: tail, role: tail, params: {model: v1, hedge: 1}, canary: true}
"""


@pytest.fixture
def declared(tmp_path, monkeypatch):
    p = tmp_path / "declared.yaml"
    p.write_text(DECL)
    monkeypatch.setenv("LENS_CONFIG", str(p))
    yield p


def test_declared_systems_replace_the_generated_ones(declared):
    systems = all_systems()
    assert [s.name for s in systems] == ["base", "twin", "cand", "tail"]
    assert [s.role for s in systems] == ["baseline", "aa", "candidate", "tail"]
    assert [s.pack for s in systems] == ["baseline", "aa", "lexical_pack_a", "tail_taming"]
    base, twin, cand, tail = systems
    assert base.endpoint == "http://a:1" and base.params == {"model": "v1"}
    assert base.expected_cfg_hash == "aaaaaaaaaaaaaaaa" and twin.expected_cfg_hash is None
    # the project's hash is of the params: an A/A twin with the same params shares it,
    # whatever its name or endpoint; another config differs; params are strings on the wire
    assert base.cfg_hash == twin.cfg_hash != cand.cfg_hash
    assert cand.params == {"model": "v2", "k1": "1.4"} and cand.repo == "acme" and cand.path_prefix == "src/"
    assert tail.canary and not cand.canary
    assert [s.name for s in all_systems(include_aa=False, include_tail=False)] == ["base", "cand"]


@pytest.mark.parametrize(
    "body, match",
    [
        ("systems:\n  - {name: a, role: candidate, params: {}}\n", "a candidate needs `pack`"),
        ("systems:\n  - {name: a, role: baseline, pack: x}\n", "`pack` is for candidates"),
        ("systems:\n  - {name: a, role: boss}\n", "systems.0.role"),
        ("systems:\n  - {name: a, role: baseline, colour: red}\n", "unknown key `systems.0.colour`"),
    ],
)
def test_bad_declarations_are_refused_naming_the_key(tmp_path, monkeypatch, body, match):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    monkeypatch.setenv("LENS_CONFIG", str(p))
    with pytest.raises(ValueError, match=match):
        load_config()


@pytest.mark.parametrize(
    "body, match",
    [
        ("systems:\n  - {name: a, role: aa}\n", "exactly one system must have role baseline"),
        ("systems:\n  - {name: a, role: baseline}\n  - {name: a, role: aa}\n", "duplicate system names"),
        ("systems:\n  - {name: ../x, role: baseline}\n", "not a path-safe identifier"),
    ],
)
def test_inconsistent_declarations_are_refused(tmp_path, monkeypatch, body, match):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    monkeypatch.setenv("LENS_CONFIG", str(p))
    with pytest.raises(ValueError, match=match):
        all_systems()


def test_reference_engine_declaration_keeps_its_hashes_and_serves_demo_entries():
    systems = all_systems()
    base = systems[0]
    # a system generated for the reference engine hashes its knobs (what the engine reports);
    # an optional knob at its default does not enter the hash
    assert base.cfg_hash == cfg_hash({k: getattr(base, k) for k in base.knobs()})
    assert "struct_arm" not in base.knobs()
    off = base.model_copy(update={"struct_arm": False})
    assert off.knobs()["struct_arm"] is False and off.cfg_hash != base.cfg_hash
    served = {s.name for s in engine_systems()}
    assert {s.name for s in systems} <= served
    for pack in load_config().packs:
        assert {s.name for s in pack_variants(pack, True)} <= served


def _agg(rows):
    return pl.DataFrame(rows, schema={"system": pl.String, "cfg_hash": pl.String}, orient="row")


def test_cfg_hash_gate_reconciles_reported_and_declared():
    s = [
        SystemConfig(name="a", declared=True, params={"m": "1"}, expected_cfg_hash="1111111111111111"),
        SystemConfig(name="b", declared=True, params={"m": "1"}),
        SystemConfig(name="c", declared=True, params={"m": "2"}, expected_cfg_hash="2222222222222222"),
        SystemConfig(name="d", declared=True, params={"m": "3"}),
        SystemConfig(name="e", declared=True, params={"m": "4"}),
    ]
    agg = _agg(
        [("a", "1111111111111111")] * 3
        + [("a", "unknown")]  # a failed query: no configuration, not a change
        + [("b", "1111111111111111")] * 2
        + [("c", "9999999999999999")] * 2
        + [("d", "unknown")] * 2
        + [("e", "3333333333333333"), ("e", "4444444444444444")]
    )
    res = {g.subject: g for g in cfg_hash_gate(agg, s)}
    assert res["a"].passed and "= declared" in res["a"].reason and res["a"].blocking
    assert res["b"].passed and "no expected cfg_hash declared" in res["b"].reason
    assert not res["c"].passed and "declaration expects 2222222222222222" in res["c"].reason
    assert "reported cfg_hash 9999999999999999" in res["c"].reason
    assert res["d"].passed and "reports no cfg_hash" in res["d"].reason
    assert not res["e"].passed and "2 configurations within the run" in res["e"].reason
    assert not cfg_hash_gate(_agg([]), s)[0].passed  # missing input never passes


def _pq(n: int, seed: int, lat_shift: float = 0.0, sla_shift: float = 0.0, cpu_scale: float = 1.0):
    rng = np.random.default_rng(seed)
    lat = rng.gamma(4, 10, n)
    sla = (rng.random(n) < 0.8).astype(float)
    cpu = rng.gamma(3, 2, n)
    noise = rng.normal(0, 1.0, n)
    sla_t = sla.copy()
    flip = rng.random(n) < abs(sla_shift)
    sla_t[flip] = 0.0 if sla_shift < 0 else 1.0
    rows = {
        "system": ["base"] * n + ["test"] * n,
        "qid": [f"q{i}" for i in range(n)] * 2,
        "lat_ms": np.concatenate([lat, lat + noise + lat_shift]),
        "sla_recall_50": np.concatenate([sla, sla_t]),
        "cpu_ms": np.concatenate([cpu, cpu * cpu_scale * rng.uniform(0.97, 1.03, n)]),
    }
    return pl.DataFrame(rows)


def test_paired_delta_ci_matches_a_direct_bootstrap_and_judges_asymmetrically():
    pq = _pq(400, 1, lat_shift=3.0)
    d, lo, hi = paired_delta_ci(pq, "test", "base", "lat_p95", b=500, seed=7)
    a = pq.filter(pl.col("system") == "test")["lat_ms"].to_numpy()
    c = pq.filter(pl.col("system") == "base")["lat_ms"].to_numpy()
    assert d == pytest.approx(np.percentile(a, 95) - np.percentile(c, 95), abs=1e-12)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 400, size=(500, 400))
    dist = np.percentile(a[idx], 95, axis=1) - np.percentile(c[idx], 95, axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(dist, [2.5, 97.5])), abs=1e-9)
    # a guard (bound >= 0) fails only when the regression is shown; a demanded improvement
    # (bound < 0) passes only when it is shown
    assert _judge_vs_baseline(0.0, 0.4, (0.4, -0.5, 1.3))[0] is True
    assert _judge_vs_baseline(0.0, 2.0, (2.0, 0.5, 3.5))[0] is False
    assert _judge_vs_baseline(-0.1, -0.2, (-0.2, -0.3, -0.05))[0] is False
    assert _judge_vs_baseline(-0.1, -0.2, (-0.2, -0.3, -0.15))[0] is True
    assert paired_delta_ci(pq, "test", "base", "ndcg_10") is None  # no per-query form: point estimate


def _scores(pq: pl.DataFrame) -> pl.DataFrame:
    m = pq.group_by("system").agg(pl.col("sla_recall_50").mean(), pl.col("cpu_ms").mean())
    long = m.unpivot(index="system", variable_name="metric", value_name="mean")
    return long.with_columns(pl.lit("all").alias("slice"))


def test_sla_and_cost_gates_fail_only_on_a_shown_regression():
    same = _pq(600, 2)
    worse = _pq(600, 3, sla_shift=-0.2, cpu_scale=1.3)
    for pq, ok in ((same, True), (worse, False)):
        sla = sla_recall_gate(_scores(pq), "base", pq)
        cost = cost_gate(_scores(pq), "base", pq)
        assert [g.passed for g in sla] == [ok] and [g.passed for g in cost] == [ok], (sla, cost)
        assert "CI [" in sla[0].reason and "CI [" in cost[0].reason


def _stream(n: int, seed: int, effect: float, conf_shift: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    qid = [f"q{i:05d}" for i in range(n)]
    repo = [f"repo{i:05d}" for i in range(n)]  # one repo per query: routed share ≈ pct
    c = (rng.random(n) < 0.8).astype(float)
    t = c.copy()
    if effect:
        t[rng.random(n) < abs(effect)] = 0.0 if effect < 0 else 1.0
    conf = rng.uniform(0.3, 0.6, n)
    return pl.DataFrame(
        {
            "qid": qid * 2,
            "repo": repo * 2,
            "arm": ["control"] * n + ["test"] * n,
            "sla_recall_50": np.concatenate([c, t]),
            "lat_ms": np.concatenate([rng.gamma(4, 10, n)] * 2),
            "confidence": np.concatenate([conf, conf + conf_shift]),
            "calib_ms": np.full(2 * n, 0.1),
        }
    )


NO_LABELS = pl.DataFrame(schema={"qid": pl.String, "arm": pl.String, "confidence": pl.Float64, "label": pl.Int64})


def _aa(n: int) -> pl.DataFrame:
    s = _stream(n, 99, 0.0)
    rng = np.random.default_rng(5)
    flip = (s["arm"] == "test").to_numpy() & (rng.random(s.height) < 0.03)
    return s.with_columns(pl.Series("sla_recall_50", np.where(flip, 1 - s["sla_recall_50"], s["sla_recall_50"])))


def test_window_sizing_follows_the_noise_floor_and_the_suite():
    cfg = CanaryConfig(window_queries=80, min_test_queries=5, aa_sla_margin=0.05, aa_z=1.96, window_power=0.8)
    n = window_test_queries(0.2, cfg)
    assert n == int(np.ceil(((1.96 + 0.8416212335729143) * 0.2 / 0.05) ** 2))  # 126
    assert window_test_queries(0.0, cfg) == 5
    assert step_window_queries(0.05, n, 850, cfg) == 425  # capped: two windows in one replay
    assert step_window_queries(1.0, n, 850, cfg) == 126
    assert step_window_queries(1.0, 3, 850, cfg) == 80  # at least window_queries


def test_per_step_windows_walk_the_ladder_and_revert_a_regression_at_5pct():
    cfg = CanaryConfig(window_queries=80, window_sizing="per_step", conf_shift_max=0.02)
    n = 850
    ok = run_ladder(CanaryStream(_stream(n, 1, 0.0), NO_LABELS, _aa(n), NO_LABELS), cfg)
    assert ok.completed and ok.final_pct == 100 and not ok.reverted
    ab = ok.steps.filter(pl.col("phase") == "ab")
    assert ab["pct"].to_list() == [5, 25, 50, 100]
    assert ab["decision"].to_list() == ["advance", "advance", "advance", "complete"]
    assert ab["window_queries"][0] > ab["window_queries"][-1]  # small steps get larger windows
    assert ok.windows.filter(pl.col("phase") == "ab")["status"].to_list().count("insufficient") == 0
    pages = []
    bad = run_ladder(
        CanaryStream(_stream(n, 2, -0.5, conf_shift=-0.05), NO_LABELS, _aa(n), NO_LABELS),
        cfg,
        page=lambda summary, details: pages.append(summary),
    )
    assert bad.reverted and bad.final_pct == 0 and len(pages) == 1
    steps = bad.steps.filter(pl.col("phase") == "ab")
    assert steps["pct"].to_list() == [5] and steps["decision"].to_list() == ["revert"]
    # the fixed single pass cannot judge the 5% step with 80-query windows
    fixed = run_ladder(CanaryStream(_stream(n, 1, 0.0), NO_LABELS, _aa(n), NO_LABELS), CanaryConfig(window_queries=80))
    assert not fixed.completed
