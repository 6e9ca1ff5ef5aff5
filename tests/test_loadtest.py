"""QPS@SLA load test: bounded, open loop, sensible answer against a server of known capacity."""

from __future__ import annotations

import time

import polars as pl
import pytest

from lens_core.collect.client import LensClient
from lens_core.collect.loadtest import qps_at_sla

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
