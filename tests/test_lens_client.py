"""The Lens client against a fake Lens server over loopback (SPEC §2, issue 3 faults)."""

from __future__ import annotations

import json
import logging
import socket
import time

import polars as pl
import pytest

from lens_core.collect.client import (
    EMPTY_COST,
    LensClient,
    LensUnreachable,
    QueryResult,
    collect_run,
)
from lens_core.collect.rawruns import RECORD_KEYS, write_raw_run
from lens_core.common.contracts import HIT_FIELD_TYPES, SHARD_FIELD_TYPES

try:
    from tests.fake_lens import FakeLens
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fake_lens import FakeLens

TOKEN = "tok-Zq9-very-secret-4711"


@pytest.fixture
def fake():
    with FakeLens() as f:
        yield f


def _client(fake, **kw) -> LensClient:
    kw.setdefault("backoff_ms", 2)
    kw.setdefault("sla_ms", 150)
    return LensClient(fake.url, **kw)


def _queries(texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "qid": [f"q{i:03d}" for i in range(len(texts))],
            "text": texts,
            "suite": ["codesearch_nl"] * len(texts),
            "intent": ["nl"] * len(texts),
            "language": ["python"] * len(texts),
        }
    )


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------
# hits, records, request shape
# --------------------------------------------------------------------------------------------
def test_hits_arrive_and_map_to_the_record(fake, tmp_path):
    client = _client(fake, k=3, token="")
    qs = _queries(["json decoder", "open file", "parse args"])
    recs = collect_run(client, qs, "lens_v22", "run-1", progress=False)
    assert [r["qid"] for r in recs] == ["q000", "q001", "q002"]
    for r in recs:
        assert tuple(r) == RECORD_KEYS
        assert r["error"] is None and r["run_id"] == "run-1" and r["system"] == "lens_v22"
        assert r["cfg_hash"] == fake.cfg_hash
        assert r["sla_ms"] == 150.0 and r["suite"] == "codesearch_nl"
        assert len(r["hits"]) == 3  # k is sent and honoured
        assert [h["rank"] for h in r["hits"]] == [1, 2, 3]
        for h in r["hits"]:
            assert set(h) == set(HIT_FIELD_TYPES) and "type" not in h
            assert h["repo"] == "cpython" and h["start_line"] <= h["end_line"]
            assert set(h["why"]) <= {"lex", "struct", "sem"} and h["why"]
        assert len(r["shards"]) == 3 and all(set(s) == set(SHARD_FIELD_TYPES) for s in r["shards"])
        assert r["cost"] == {"probes": 3, "cpu_ms": 1.25}
        assert isinstance(r["lat_ms"], float) and 0 <= r["lat_ms"] < 1000
        assert abs(r["req_ts"] - time.time() * 1000) < 60_000
    seen = [x for x in fake.requests if x["path"] == "/search"]
    assert {x["q"] for x in seen} == {"json decoder", "open file", "parse args"}
    assert all(x["k"] == "3" and x["system"] == "lens_v22" and x["deadline_ms"] == "150" for x in seen)
    assert all(x["auth"] is None for x in seen)  # no token configured: no Authorization header
    out = write_raw_run(tmp_path / "lens_v22.ndjson", recs)  # the lead's writer accepts them
    assert out["records"] == 3
    assert json.loads((tmp_path / "lens_v22.ndjson").read_text().splitlines()[0])["qid"] == "q000"


def test_query_past_the_deadline_is_late_not_dropped(fake):
    fake.plan("slow one", "drip:25")  # 5 hits + done, 25 ms apart: ~150 ms in all
    client = _client(fake, sla_ms=60)
    res = client.search("q1", "slow one", "sys")
    assert res.error is None and res.late and len(res.hits) == 5
    assert res.client_ms > 60 and res.lat_ms > 60  # server-reported time is past the SLA too
    fake.plan("slow one", "drip:25")
    recs = collect_run(client, _queries(["fast", "slow one"]), "sys", "r", progress=False)
    assert [r["qid"] for r in recs] == ["q000", "q001"]
    assert recs[1]["error"] is None and recs[1]["hits"] and recs[1]["lat_ms"] > recs[1]["sla_ms"]


def test_stream_past_the_hard_cap_is_deadline_exceeded_not_retried(fake):
    fake.plan("stuck", "drip:120")
    client = _client(fake, sla_ms=30, hard_cap_ms=200)
    t0 = time.monotonic()
    res = client.search("q1", "stuck", "sys")
    assert res.error == "deadline_exceeded" and res.late and res.hits == []
    assert time.monotonic() - t0 < 1.0 and res.attempts == 1 and fake.count("stuck") == 1
    assert res.lat_ms == pytest.approx(res.client_ms) and res.lat_ms >= 190


def test_slow_first_byte_counts_in_client_time(fake):
    fake.plan("late start", "slow:80")
    res = _client(fake, sla_ms=50).search("q1", "late start", "sys")
    assert res.error is None and res.client_ms >= 80 and res.late


# --------------------------------------------------------------------------------------------
# retries
# --------------------------------------------------------------------------------------------
def test_5xx_is_retried_then_succeeds(fake):
    fake.plan("flaky", "http:503", "http:500")
    res = _client(fake, retries=3).search("q1", "flaky", "sys")
    assert res.error is None and res.attempts == 3 and len(res.hits) == 5
    assert fake.count("flaky") == 3


def test_5xx_after_the_bound_is_recorded_as_error(fake):
    fake.plan("down", *["http:503"] * 10)
    client = _client(fake, retries=2)
    recs = collect_run(client, _queries(["ok", "down"]), "sys", "r", progress=False)
    assert fake.count("down") == 3  # 1 + 2 retries, then it stops
    bad = recs[1]
    assert bad["error"].startswith("http_5xx:503") and bad["hits"] == [] and bad["shards"] == []
    assert bad["cost"] == EMPTY_COST and isinstance(bad["lat_ms"], float)
    assert recs[0]["error"] is None


def test_connection_reset_is_retried_then_succeeds_or_recorded(fake):
    fake.plan("reset once", "reset")
    res = _client(fake).search("q1", "reset once", "sys")
    assert res.error is None and res.attempts == 2 and fake.count("reset once") == 2
    fake.plan("reset always", *["reset"] * 5)
    res = _client(fake, retries=1).search("q2", "reset always", "sys")
    assert res.error == "conn_reset" and res.attempts == 2 and fake.count("reset always") == 2


def test_4xx_is_never_retried(fake):
    fake.plan("bad request", "http:400", "ok")
    res = _client(fake, retries=3).search("q1", "bad request", "sys")
    assert res.error.startswith("http_4xx:400:injected 400")
    assert res.attempts == 1 and fake.count("bad request") == 1


def test_truncated_stream_is_an_error(fake):
    fake.plan("cut", *["truncate"] * 5)
    res = _client(fake, retries=1).search("q1", "cut", "sys")
    assert res.error == "truncated_stream" and res.hits == [] and fake.count("cut") == 2
    fake.plan("cut once", "truncate")  # retried like a connection error
    res = _client(fake, retries=1).search("q2", "cut once", "sys")
    assert res.error is None and len(res.hits) == 5


@pytest.mark.parametrize(
    "behaviour,error",
    [
        ("badjson", "bad_line:2:not JSON"),
        ("nofield:path", "bad_line:1:missing path"),
        ("nofield:why", "bad_line:1:missing why"),
    ],
)
def test_bad_lines_name_the_line_and_field_and_are_not_retried(fake, behaviour, error):
    fake.plan("q", behaviour)
    res = _client(fake).search("q1", "q", "sys")
    assert res.error == error and res.attempts == 1 and fake.count("q") == 1


def test_backoff_is_exponential_bounded_and_seeded():
    c = LensClient("http://127.0.0.1:9", backoff_ms=50, max_backoff_ms=300, seed=7)
    d = [c._backoff_s("q1", a) for a in (1, 2, 3, 4, 5)]
    assert 0.025 <= d[0] <= 0.075 and 0.05 <= d[1] <= 0.15 and d[4] <= 0.3
    assert d == [
        LensClient("http://127.0.0.1:9", backoff_ms=50, max_backoff_ms=300, seed=7)._backoff_s("q1", a)
        for a in (1, 2, 3, 4, 5)
    ]
    assert d != [
        LensClient("http://127.0.0.1:9", backoff_ms=50, max_backoff_ms=300, seed=8)._backoff_s("q1", a)
        for a in (1, 2, 3, 4, 5)
    ]


# --------------------------------------------------------------------------------------------
# hedging
# --------------------------------------------------------------------------------------------
def test_hedge_second_probe_wins_and_the_loser_is_cancelled(fake, caplog):
    fake.plan("tail", "drip:60", "ok")  # the first probe is slow, the hedge is fast
    client = _client(fake, hedge=True, hedge_delay_ms=10)
    with caplog.at_level(logging.INFO, logger="lens_core.collect.client"):
        res = client.search("q1", "tail", "sys")
    assert res.error is None and res.hedged and res.hedge_winner == "hedge" and res.hedge_cancelled
    assert res.client_ms < 300 and len(res.hits) == 5  # the slow primary alone takes >= 360 ms
    assert fake.count("tail") == 2
    assert fake.wait_disconnects(1) >= 1 and "tail" in fake.disconnects  # server saw the cancel
    assert client.stats["hedge_cancelled"] == 1 and client.stats["hedges"] == 1
    assert any("cancelled the primary probe" in r.getMessage() for r in caplog.records)


def test_hedge_not_issued_when_the_first_answer_is_fast(fake):
    client = _client(fake, hedge=True, hedge_delay_ms=200)
    res = client.search("q1", "quick", "sys")
    assert res.error is None and not res.hedged and fake.count("quick") == 1


def test_hedge_delay_is_min_of_6ms_and_a_tenth_of_p50(fake):
    client = _client(fake, hedge=True)
    assert client.current_hedge_delay_ms() == 6.0  # nothing measured yet
    client._recent.extend([20.0] * 10)
    assert client.current_hedge_delay_ms() == pytest.approx(2.0)
    client._recent.clear()
    client._recent.extend([200.0] * 10)
    assert client.current_hedge_delay_ms() == 6.0


# --------------------------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------------------------
def test_token_never_reaches_logs_exceptions_or_records(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    with FakeLens(token=TOKEN) as f:
        # the injected 4xx echoes the request's Authorization header back in its error text
        f.plan("echo", "http:401").plan("flaky", "http:503").plan("cut", "truncate", "truncate")
        client = LensClient(f.url, backoff_ms=1, retries=1)  # token from $AUTH_TOKEN
        assert TOKEN not in repr(client) and TOKEN not in str(client)
        with caplog.at_level(logging.DEBUG):
            recs = collect_run(client, _queries(["ok", "echo", "flaky", "cut"]), "sys", "r", progress=True)
        assert all(x["auth"] == f"Bearer {TOKEN}" for x in f.requests)  # it was sent
        assert recs[1]["error"].startswith("http_4xx:401") and "Bearer ***" in recs[1]["error"]
        assert recs[3]["error"] == "truncated_stream"
        path = tmp_path / "sys.ndjson"
        write_raw_run(path, recs)
        assert TOKEN not in path.read_text() and TOKEN not in json.dumps(recs)
        # a wrong token: one clear exception, without any token in it
        wrong = LensClient(f.url, token=TOKEN + "-x", retries=0)
        with pytest.raises(LensUnreachable) as ei:
            collect_run(wrong, _queries(["a"]), "sys", "r", progress=False)
    assert "401" in str(ei.value) and TOKEN not in str(ei.value)
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert TOKEN not in text
    assert caplog.records  # the test looked at real log output


def test_endpoint_credentials_are_redacted():
    c = LensClient("http://user:pw-SECRET@127.0.0.1:1/lens/", token=TOKEN)
    assert "pw-SECRET" not in repr(c) and c.endpoint == "http://127.0.0.1:1/lens"
    with pytest.raises(LensUnreachable) as ei:
        c.health(attempts=1)
    assert "pw-SECRET" not in str(ei.value) and TOKEN not in str(ei.value)
    with pytest.raises(ValueError) as ei2:
        LensClient("ftp://user:pw-SECRET@host/")
    assert "pw-SECRET" not in str(ei2.value)


# --------------------------------------------------------------------------------------------
# unreachable endpoint
# --------------------------------------------------------------------------------------------
def test_unreachable_endpoint_fails_fast_with_one_exception(caplog):
    url = _closed_port_url()
    client = LensClient(url, token=TOKEN, retries=2, backoff_ms=1)
    qs = _queries([f"query {i}" for i in range(200)])
    t0 = time.monotonic()
    with pytest.raises(LensUnreachable) as ei:
        collect_run(client, qs, "sys", "r", progress=False)
    assert time.monotonic() - t0 < 2.0
    msg = str(ei.value)
    assert msg.startswith(f"cannot reach {url}") and "conn_refused" in msg and TOKEN not in msg
    assert client.stats["queries"] == 0  # no per-query storm


def test_unreachable_mid_run_trips_the_breaker_without_health_probe():
    client = LensClient(_closed_port_url(), retries=0, backoff_ms=1, concurrency=2)
    with pytest.raises(LensUnreachable, match="first 8 queries all failed"):
        collect_run(client, _queries([f"q{i}" for i in range(100)]), "sys", "r", progress=False, check_health=False)
    assert client.stats["queries"] < 20


def test_health_returns_the_servers_json(fake):
    assert _client(fake).health() == {"status": "ok", "engine": "fake"}


# --------------------------------------------------------------------------------------------
# the open-source Lens JSON response
# --------------------------------------------------------------------------------------------
def test_oss_json_reader_maps_results_to_one_line_spans():
    with FakeLens(default="oss", hits=4) as f:
        client = LensClient(f.url, repo="myrepo", k=3)
        res = client.search("q1", "anything", "oss_lens")
        assert res.error is None and res.cfg_hash is None
        assert [h["rank"] for h in res.hits] == [1, 2, 3]  # rank by order, cut at k
        for h in res.hits:
            assert h["repo"] == "myrepo" and h["start_line"] == h["end_line"]
            assert h["why"] == ["unknown"] and h["shard"] is None and isinstance(h["score"], float)
        assert res.lat_ms == pytest.approx(res.client_ms) and res.shards == []
        recs = collect_run(client, _queries(["a", "b"]), "oss_lens", "r", progress=False, cfg_hash="cafe")
        # the JSON shape reports no cfg_hash: recorded as unknown, never as the project's
        assert all(r["cfg_hash"] == "unknown" and len(r["hits"]) == 3 for r in recs)
        assert LensClient(f.url).repo == "127.0.0.1"  # default repo: the endpoint host


# --------------------------------------------------------------------------------------------
# collect_run
# --------------------------------------------------------------------------------------------
def test_collect_run_keeps_query_order_under_concurrency(fake):
    texts = [f"query {i}" for i in range(12)]
    for i, t in enumerate(texts[:6]):  # early queries finish last
        fake.plan(t, f"slow:{60 - 10 * i}")
    fake.plan("query 7", "http:404")
    ts = iter(range(1000, 2000))
    side: list[dict] = []
    client = _client(fake, concurrency=4)
    recs = collect_run(
        client, _queries(texts), "sys", "r", req_ts_fn=lambda: float(next(ts)), progress=True, sidecar=side
    )
    # concurrent, and never more than `concurrency` at once: +1 because the fake counts a request
    # until its handler thread returns, after the client has the answer and may send the next one
    assert 2 <= fake.max_inflight <= 4 + 1
    assert [r["qid"] for r in recs] == [f"q{i:03d}" for i in range(12)] == [s["qid"] for s in side]
    assert all(tuple(r) == RECORD_KEYS for r in recs)
    assert sorted(r["req_ts"] for r in recs) == [float(x) for x in range(1000, 1012)]
    assert recs[7]["error"].startswith("http_4xx:404") and recs[7]["cfg_hash"] == "unknown"
    assert sum(r["error"] is not None for r in recs) == 1
    assert all(s["attempts"] >= 1 and s["client_ms"] > 0 for s in side)


def test_collect_run_refuses_a_query_table_without_required_columns(fake):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['language'\]"):
        collect_run(_client(fake), _queries(["a"]).drop("language"), "sys", "r", progress=False)
    with pytest.raises(ValueError, match="row 0 column 'text'"):
        collect_run(_client(fake), _queries([""]), "sys", "r", progress=False)


def test_query_result_is_a_plain_record():
    r = QueryResult("q", [], [], dict(EMPTY_COST), None, None, 1.0, "x", 1, False)
    assert not r.ok and r.hedged is False


def test_health_without_a_health_route_counts_as_reachable():
    with FakeLens(token=None) as f:
        c = LensClient(f.url + "/nohealth-prefix")  # every path under this prefix is a 404
        assert c.health() == {"status": "unknown", "http_status": 404}


def test_from_env_reads_endpoint_token_and_sla(monkeypatch):
    monkeypatch.setenv("LENS_ENDPOINTS", " http://127.0.0.1:1234/ , http://127.0.0.1:5678 ")
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("SLA_MS", "80")
    c = LensClient.from_env(retries=1)
    assert c.endpoint == "http://127.0.0.1:1234" and c.sla_ms == 80.0 and c.retries == 1
    assert c._token == TOKEN and TOKEN not in repr(c)
    monkeypatch.setenv("LENS_ENDPOINTS", " , ")
    with pytest.raises(ValueError, match="LENS_ENDPOINTS"):
        LensClient.from_env()


def test_collect_run_with_no_queries_returns_nothing(fake):
    assert collect_run(_client(fake), _queries([]), "sys", "r", progress=False) == []
