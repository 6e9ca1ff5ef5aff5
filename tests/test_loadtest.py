"""QPS@SLA load test: bounded, open loop, sensible answer against a server of known capacity."""

from __future__ import annotations

import threading
import time

import dagster as dg
import polars as pl
import pytest

from lens_assets.decisions import qps_at_sla as qps_asset
from lens_core.collect.client import LensClient
from lens_core.collect.loadtest import load_test, qps_at_sla
from lens_core.common.systems import SystemConfig
from lens_core.decide.promotion import qps_rule
from resources.data_source import LensDataSource
from resources.io_manager import ParquetIOManager

try:
    from tests.fake_lens import FakeLens
except ImportError:
    from fake_lens import FakeLens

QUERIES = pl.DataFrame({"qid": [f"q{i}" for i in range(10)], "text": [f"text {i}" for i in range(10)]})


def test_qps_at_sla_finds_the_saturation_point_and_stops_by_itself():
    # one request in service at a time, 20 ms each: capacity ~50 qps. The SLA is generous so
    # scheduler noise on a loaded 2-core machine does not decide the answer; saturation does
    # (60 requests offered at 1000 qps queue for ~1.2 s).
    with FakeLens(service_ms=20, capacity=1) as f:
        t0 = time.monotonic()
        out = qps_at_sla(
            lambda: LensClient(f.url, retries=0, sla_ms=400),
            QUERIES,
            "lens_v22",
            sla_ms=400,
            rates=(1000, 10, 25),
            duration_s=0.5,
            max_requests=60,
            min_requests=5,
            max_total_s=10,
        )
        wall = time.monotonic() - t0
        sent = f.count()
    table = [(r["offered_qps"], r["sent"], r["p99_ms"], r["errors"]) for r in out["table"]]
    assert wall < 8.0, table
    assert out["qps_at_sla"] == 25.0, table
    assert [r["offered_qps"] for r in out["table"]] == [10.0, 25.0, 1000.0]  # ascending
    low, mid, high = out["table"]
    assert low["pass"] and mid["pass"] and not high["pass"]
    assert high["p99_ms"] > 400 > mid["p99_ms"] >= 20
    assert [r["sent"] for r in out["table"]] == [5, 13, 60]  # clamp(rate x duration, min, max)
    assert sent == 3 + 5 + 13 + 60  # warmup + each rate: nothing beyond the caps
    assert 5 <= low["achieved_qps"] <= 15 and high["achieved_qps"] < 70  # capacity ~50 qps
    assert out["stopped"].startswith("p99 or errors over the SLA at 1000")


def test_qps_at_sla_respects_the_time_cap():
    with FakeLens() as f:
        t0 = time.monotonic()
        out = qps_at_sla(
            lambda: LensClient(f.url, retries=0),
            QUERIES,
            "s",
            rates=(5, 10, 20, 40),
            duration_s=10,
            max_requests=1000,
            min_requests=3,
            max_total_s=0.6,
        )
        assert time.monotonic() - t0 < 2.5
    assert out["stopped"].startswith("time cap") and len(out["table"]) < 4
    assert sum(r["sent"] for r in out["table"]) <= 0.6 * 40


def test_errors_fail_a_rate():
    with FakeLens(default="http:503") as f:
        out = qps_at_sla(
            lambda: LensClient(f.url, retries=0),
            QUERIES,
            "s",
            rates=(20, 40),
            duration_s=0.2,
            max_requests=5,
            min_requests=1,
            warmup=0,
        )
    assert out["qps_at_sla"] == 0.0 and out["table"][0]["errors"] == 4
    assert not out["table"][0]["pass"] and len(out["table"]) == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        qps_at_sla(lambda: None, QUERIES, "s", rates=())
    with pytest.raises(ValueError, match="lacks column"):
        qps_at_sla(lambda: None, QUERIES.drop("text"), "s")


# -- issue 17: the arms of a comparison in ONE interleaved load test ---------------------------
class _Res:
    def __init__(self, error=None):
        self.error = error


class _Stub:
    """A client per arm with a known service time and capacity (requests in service at once);
    records (arm, qid) of every request in the order they start."""

    def __init__(self, calls, lock, service_ms: float, capacity: int | None = None):
        self.calls, self.lock, self.service_ms = calls, lock, service_ms
        self.sem = threading.Semaphore(capacity) if capacity else None

    def search(self, qid, text, system, deadline_ms=None, extra=None):
        with self.lock:
            self.calls.append((system, qid, dict(extra or {})))
        if self.sem is not None:
            with self.sem:
                time.sleep(self.service_ms / 1000.0)
        else:
            time.sleep(self.service_ms / 1000.0)
        return _Res()


def _stubs(**arms):
    calls, lock = [], threading.Lock()
    made = {name: _Stub(calls, lock, *spec) for name, spec in arms.items()}
    return calls, made


def test_both_arms_run_in_one_test_interleaved_each_at_the_offered_rate():
    calls, made = _stubs(base=(2.0,), tail=(2.0,))
    out = load_test(
        made.__getitem__,
        QUERIES,
        ["base", "tail"],
        sla_ms=200,
        rates=(40, 20),
        duration_s=0.25,
        max_requests=50,
        min_requests=5,
        warmup=0,
        seed=3,
        extra={"tail": {"tail_hedge": "1"}},
    )
    assert out["grid"] == [20.0, 40.0] and out["extended"] == []
    for arm in ("base", "tail"):
        t = out["arms"][arm]["table"]
        assert [r["offered_qps"] for r in t] == [20.0, 40.0] and [r["sent"] for r in t] == [5, 10]
        assert out["arms"][arm]["qps_at_sla"] == 40.0 and out["arms"][arm]["sustained"]
        # each arm at the offered rate, not half of it
        assert 0.6 * 40 <= t[1]["achieved_qps"] <= 1.4 * 40, t[1]
    # rounds of one request per arm, the same query for both arms of a round
    assert len(calls) == 30
    for i in range(0, 30, 2):
        (a1, q1, _), (a2, q2, _) = calls[i], calls[i + 1]
        assert {a1, a2} == {"base", "tail"} and q1 == q2, calls[i : i + 2]
    assert all(x == {"tail_hedge": "1"} for a, _, x in calls if a == "tail")
    assert all(x == {} for a, _, x in calls if a == "base")
    # the order within rounds is seeded: reproducible, and not always the same arm first
    firsts = [calls[i][0] for i in range(0, 30, 2)]
    assert len(set(firsts)) == 2
    calls2, made2 = _stubs(base=(2.0,), tail=(2.0,))
    load_test(
        made2.__getitem__,
        QUERIES,
        ["base", "tail"],
        sla_ms=200,
        rates=(20, 40),
        duration_s=0.25,
        max_requests=50,
        min_requests=5,
        warmup=0,
        seed=3,
    )
    assert [c[:2] for c in calls2] == [c[:2] for c in calls]


def test_a_baseline_that_sustains_no_rate_gets_the_grid_extended_downward():
    # base: one request in service at a time, 150 ms each (~6.7 qps); tail: fast
    calls, made = _stubs(base=(150.0, 1), tail=(1.0,))
    out = load_test(
        made.__getitem__,
        QUERIES,
        ["base", "tail"],
        sla_ms=400,
        rates=(10, 20),
        duration_s=1.0,
        max_requests=10,
        min_requests=10,
        warmup=0,
        min_rate=1.25,
        max_extend_s=20,
    )
    base, tail = out["arms"]["base"], out["arms"]["tail"]
    # 10 qps saturates the base (queue grows to ~600 ms), 5 qps does not (200 ms apart, 150 ms each)
    assert out["grid"] == [10.0, 20.0, 5.0], out
    assert out["extended"] == [5.0]
    assert base["qps_at_sla"] == 5.0 and base["lowest_rate"] == 5.0 and base["sustained"]
    assert tail["qps_at_sla"] == 20.0
    # the tail arm was sent at the added rate too (like with like)
    assert [r["offered_qps"] for r in tail["table"]] == [10.0, 20.0, 5.0]


def test_the_extension_stops_at_the_floor_and_records_it():
    calls, made = _stubs(base=(300.0,), tail=(1.0,))  # base: always over a 200 ms SLA
    out = load_test(
        made.__getitem__,
        QUERIES,
        ["base", "tail"],
        sla_ms=200,
        rates=(10, 20),
        duration_s=0.3,
        max_requests=10,
        min_requests=3,
        warmup=0,
        min_rate=3,
    )
    assert out["grid"] == [10.0, 20.0, 5.0, 3.0] and out["extended"] == [5.0, 3.0]
    assert out["arms"]["base"]["qps_at_sla"] == 0.0 and not out["arms"]["base"]["sustained"]
    assert out["arms"]["base"]["lowest_rate"] == 3.0 and out["arms"]["tail"]["qps_at_sla"] == 20.0
    assert "floor 3 qps" in out["stopped"]
    # no extension asked for: none made (the single-system API keeps its old behaviour)
    calls, made = _stubs(base=(300.0,))
    single = qps_at_sla(
        lambda: made["base"], QUERIES, "base", sla_ms=200, rates=(10,), duration_s=0.3, min_requests=3, warmup=0
    )
    assert single["grid"] == [10.0] and single["qps_at_sla"] == 0.0


def test_a_delta_from_zero_is_reported_as_what_it_is():

    tail = SystemConfig(name="lens_v22_tail", pack="tail_taming")
    r = qps_rule("tail_taming", tail, "lens_v22", 0.10, {"lens_v22": 0.0, "lens_v22_tail": 80.0}, {"lens_v22": 1.25})
    assert r["passed"] and r["value"] is None
    assert "baseline sustains no rate down to 1.25 qps; test sustains 80 qps" in r["detail"]
    both = qps_rule("tail_taming", tail, "lens_v22", 0.10, {"lens_v22": 0.0, "lens_v22_tail": 0.0})
    assert not both["passed"] and "neither sustains any rate" in both["detail"]
    assert "down to 1.25 qps" in both["detail"]  # the configured floor when no lowest rate is given
    missing = qps_rule("tail_taming", tail, "lens_v22", 0.10, None)
    assert not missing["passed"] and "not measured" in missing["detail"]
    up = qps_rule("tail_taming", tail, "lens_v22", 0.10, {"lens_v22": 40.0, "lens_v22_tail": 80.0})
    assert up["passed"] and up["value"] == pytest.approx(1.0)
    down = qps_rule("tail_taming", tail, "lens_v22", 0.10, {"lens_v22": 40.0, "lens_v22_tail": 42.0})
    assert not down["passed"] and down["value"] == pytest.approx(0.05)


def test_load_test_refuses_bad_arms():
    with pytest.raises(ValueError, match="distinct"):
        load_test(lambda a: None, QUERIES, ["a", "a"])
    with pytest.raises(ValueError, match="min_rate"):
        load_test(lambda a: None, QUERIES, ["a"], min_rate=0)


def test_the_qps_asset_measures_baseline_and_tail_in_one_load_test(monkeypatch, data_dir, tmp_path):

    cfg = tmp_path / "lt.yaml"
    cfg.write_text(
        "load_test: {queries: 10, rates: [20, 40], duration_s: 0.25, max_requests: 10, max_total_s: 10,"
        " min_rate: 5, min_requests: 5, max_extend_s: 5, seed: 17}\n"
    )
    monkeypatch.setenv("LENS_CONFIG", str(cfg))
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.delenv("AUTH_TOKEN", raising=False)
    q = QUERIES.with_columns(suite=pl.lit("nl"), intent=pl.lit("nl"), language=pl.lit("python"))

    @dg.asset(name="query_suites", partitions_def=qps_asset.partitions_def)
    def suites_stub():
        return q

    @dg.asset(name="raw_runs", partitions_def=qps_asset.partitions_def)
    def raw_stub():
        return pl.DataFrame({"x": [1]})

    with FakeLens() as f:
        monkeypatch.setenv("LENS_ENDPOINTS", f.url)
        res = dg.materialize(
            [suites_stub, raw_stub, qps_asset],
            partition_key="2026-11-15",
            resources={"lens_source": LensDataSource(), "io_manager": ParquetIOManager()},
        )
        sent = [r["system"] for r in f.requests if r["path"] == "/search"]
    df = res.output_for_node("qps_at_sla")
    assert df["system"].to_list() == ["lens_v22", "lens_v22_tail"]
    assert df["qps_at_sla"].to_list() == [40.0, 40.0] and df["seed"].to_list() == [17, 17]
    assert df["grid"].to_list() == ["[20.0, 40.0]"] * 2 and df["load_test_arms"][0] == "lens_v22,lens_v22_tail"
    # one load test: after the warm-up, the arms' requests alternate (rounds of both arms; the
    # arrival order at the server may swap neighbours, never let one arm run ahead)
    load = sent[6:]
    assert len(load) == 2 * (5 + 10)
    for cut in range(1, len(load) + 1):
        assert abs(load[:cut].count("lens_v22") - load[:cut].count("lens_v22_tail")) <= 2, load
