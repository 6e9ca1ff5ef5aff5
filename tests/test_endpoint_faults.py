"""Endpoint faults (issue 18, items 2 and 3): the Lens client against a hostile endpoint.

Loopback only (tests/fake_lens.py, plus a raw TCP dripper and a pager receiver here); every
loop and every wait is bounded. Each case lands in a TALLY with one outcome:

* `isolated`: an invalid answer became ONE failed query with its reason (scored 0, counted,
  never dropped, SPEC §4) and every other query and system went on;
* `refused`: a bad setting or a refused credential ended the run before anything was sent or
  written, with one line that names the problem and never the token;
* `caught`: a dripping answer was cut at the hard cap (1.5 s at the default SLA);
* `leak`: the token showed up somewhere it must not (stdout, stderr, logs, Dagster events,
  records, exception text, files, pages). The suite fails on any leak.

`test_zz_tally` prints "endpoint fault tally: tried N, isolated N, refused N, caught N, leaks 0"
(with -s, or in the terminal summary of a plain run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lens_core.collect.client import (
    EMPTY_COST,
    LensAuthRefused,
    LensClient,
    LensUnreachable,
    check_token,
    collect_run,
)
from lens_core.collect.preflight import REFUSAL_ERRORS, AuthError, ConfigError, preflight
from lens_core.collect.rawruns import raw_run_path, write_raw_run
from lens_core.common.settings import _load
from lens_core.common.systems import SystemConfig, check_safe_name
from lens_core.ingest.ndjson import ingest
from resources.data_source import LensDataSource
from resources.paging import PagerResource

try:
    from tests.conftest import new_dagster_home
    from tests.fake_lens import BAD_CASES, OSS_BAD_CASES, FakeLens
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import new_dagster_home
    from fake_lens import BAD_CASES, OSS_BAD_CASES, FakeLens

TOKEN = "tok-Fault-7Hq2-never-show-me"
REPO = Path(__file__).resolve().parents[1]
CAP_S = 1.5  # the client's default hard cap at SLA 150 ms: max(10 x 150 ms, 1 s)
CAP_SLACK_S = 0.25  # scheduling slack allowed on top of the cap (2 shared cores)

TALLY: list[tuple[str, str]] = []
MEASURED: dict[str, float] = {}


def _tally(case: str, outcome: str) -> None:
    assert outcome in ("isolated", "refused", "caught", "leak")
    TALLY.append((case, outcome))


def _leaks(*texts: object) -> bool:
    return any(TOKEN in str(t) for t in texts)


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


@pytest.fixture
def fake():
    with FakeLens(token=TOKEN) as f:
        yield f


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in ("LENS_CONFIG", "LENS_ENDPOINTS", "LENS_SUITES", "LENS_GROUND_TRUTH", "LENS_ENGINE_TOKEN", "PAGER_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    _load.cache_clear()
    yield
    _load.cache_clear()


def _client(fake, **kw) -> LensClient:
    kw.setdefault("backoff_ms", 2)
    kw.setdefault("sla_ms", 150)
    kw.setdefault("token", TOKEN)
    return LensClient(fake.url, **kw)


# --------------------------------------------------------------------------------------------
# 2. per-query isolation: one invalid value = one failed query with its reason
# --------------------------------------------------------------------------------------------
# hits are lines 1-5, done is line 6; a replaced line is line 2 (then done is line 7)
EXPECTED = {
    "nan_score": r"bad_value:2:score is nan",
    "inf_score": r"bad_value:2:score is inf",
    "ninf_score": r"bad_value:2:score is -inf",
    "overflow_score": r"bad_value:2:score is inf",
    "rank_2p40": r"bad_value:2:rank 1099511627776 outside 1\.\.2147483647",
    "rank_zero": r"bad_value:2:rank 0 outside 1\.\.",
    "rank_negative": r"bad_value:2:rank -1 outside 1\.\.",
    "rank_float": r"bad_line:2:rank is float",
    "rank_bool": r"bad_line:2:rank is bool",
    "rank_duplicate": r"bad_value:3:rank 2 repeats line 2",
    "start_after_end": r"bad_value:2:start_line 50 > end_line 15",
    "line_zero": r"bad_value:2:start_line 0 outside 1\.\.",
    "line_2p40": r"bad_value:2:end_line 1099511627776 outside",
    "line_huge_int": r"bad_value:2:end_line 100000000000\.\.\. \(401 digits\) outside",
    "empty_repo": r"bad_value:2:repo is empty",
    "blank_path": r"bad_value:2:path is empty",
    "null_path": r"bad_line:2:path is null",
    "lone_surrogate_path": r"bad_value:2:path is not valid UTF-8",
    "nul_in_path": r"bad_value:2:path contains NUL",
    "non_utf8_path": r"bad_value:2:not UTF-8 \(byte \d+\)",
    "shard_2p40": r"bad_value:2:shard 1099511627776 outside 0\.\.",
    "shard_negative": r"bad_value:2:shard -3 outside 0\.\.",
    "why_unknown": r"bad_line:2:why must be a non-empty subset",
    "why_empty": r"bad_line:2:why must be a non-empty subset",
    "nan_latency": r"bad_value:6:lat_ms is nan",
    "inf_latency": r"bad_value:6:lat_ms is inf",
    "negative_latency": r"bad_value:6:lat_ms is -5 \(< 0\)",
    "inf_issued_ts": r"bad_value:6:shards\[0\]\.issued_ts is inf",
    "ninf_done_ts": r"bad_value:6:shards\[0\]\.done_ts is -inf",
    "nan_first_byte_ts": r"bad_value:6:shards\[0\]\.first_byte_ts is nan",
    "negative_ts": r"bad_value:6:shards\[0\]\.issued_ts is -1 \(< 0\)",
    "empty_probe_id": r"bad_value:6:shards\[0\]\.probe_id is empty",
    "bad_shard_status": r"bad_line:6:shards\[0\]\.status 'exploded'",
    "probes_2p40": r"bad_value:6:cost\.probes 1099511627776 outside 0\.\.",
    "nan_cpu": r"bad_value:6:cost\.cpu_ms is nan",
    "negative_cpu": r"bad_value:6:cost\.cpu_ms is -1 \(< 0\)",
    "deep_nesting": r"bad_line:2:not JSON \(nested too deep\)",
    "non_utf8_line": r"bad_value:2:not UTF-8 \(byte 1\)",
}
OSS_EXPECTED = {
    "nan_score": r"bad_value:1:result\[1\]\.score is nan",
    "inf_score": r"bad_value:1:result\[1\]\.score is inf",
    "line_zero": r"bad_value:1:result\[1\]\.line_number 0 outside 1\.\.",
    "line_2p40": r"bad_value:1:result\[1\]\.line_number 1099511627776 outside",
    "empty_path": r"bad_value:1:result\[1\]\.file_path is empty",
    "lone_surrogate_path": r"bad_value:1:result\[1\]\.file_path is not valid UTF-8",
}


def test_every_fault_case_has_an_expected_reason():
    assert set(EXPECTED) == set(BAD_CASES) and set(OSS_EXPECTED) == set(OSS_BAD_CASES)


def _isolated(recs: list[dict], bad: int, pattern: str, tmp_path: Path, caplog) -> bool:
    """The bad query failed with its reason, the others answered, and the file is written."""
    assert len(recs) == 3 and [r["qid"] for r in recs] == ["q000", "q001", "q002"]
    r = recs[bad]
    assert r["error"] is not None and re.match(pattern, r["error"]), r["error"]
    assert r["hits"] == [] and r["shards"] == [] and r["cost"] == EMPTY_COST
    assert isinstance(r["lat_ms"], float) and math.isfinite(r["lat_ms"]) and r["lat_ms"] >= 0
    assert all(x["error"] is None and len(x["hits"]) == 5 for i, x in enumerate(recs) if i != bad)
    path = tmp_path / "sys.ndjson"
    assert write_raw_run(path, recs)["records"] == 3
    return not _leaks(path.read_text(), json.dumps(recs), caplog.text)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_an_invalid_value_is_one_failed_query_and_the_run_goes_on(fake, case, tmp_path, caplog):
    fake.plan("poisoned", f"bad:{case}")
    client = _client(fake, concurrency=2)
    with caplog.at_level(logging.DEBUG):
        recs = collect_run(client, _queries(["before", "poisoned", "after"]), "sys", "r", progress=False)
    ok = _isolated(recs, 1, EXPECTED[case], tmp_path, caplog)
    assert fake.count("poisoned") == 1  # an invalid value is not retried
    _tally(f"ndjson:{case}", "isolated" if ok else "leak")
    assert ok


@pytest.mark.parametrize("case", sorted(OSS_BAD_CASES))
def test_an_invalid_value_in_the_oss_json_shape_is_one_failed_query(fake, case, tmp_path, caplog):
    fake.default = "oss"
    fake.plan("poisoned", f"ossbad:{case}")
    with caplog.at_level(logging.DEBUG):
        recs = collect_run(_client(fake), _queries(["before", "poisoned", "after"]), "oss", "r", progress=False)
    ok = _isolated(recs, 1, OSS_EXPECTED[case], tmp_path, caplog)
    _tally(f"oss:{case}", "isolated" if ok else "leak")
    assert ok


def test_a_hedged_query_with_an_invalid_value_fails_alone(fake, tmp_path, caplog):
    fake.plan("poisoned", "bad:nan_score", "bad:nan_score")
    client = _client(fake, hedge=True, hedge_delay_ms=0.01)
    recs = collect_run(client, _queries(["before", "poisoned", "after"]), "sys", "r", progress=False)
    ok = _isolated(recs, 1, EXPECTED["nan_score"], tmp_path, caplog)
    _tally("hedged:nan_score", "isolated" if ok else "leak")
    assert ok


def test_every_poisoned_answer_of_one_system_leaves_every_other_query_and_system_whole(fake, tmp_path):
    """One weekly run in miniature: system A meets every invalid value once (one query each),
    system B none. Both raw runs are written and ingested; A has exactly one failed query per
    case, each with its reason, B has none; nothing is dropped."""
    cases = sorted(BAD_CASES)
    texts = [f"ok {i}" for i in range(4)] + [f"poison {c}" for c in cases]
    for c in cases:
        fake.plan(f"poison {c}", f"bad:{c}")
    client = _client(fake, concurrency=4)
    qs = _queries(texts)
    paths = []
    for system in ("sys_a", "sys_b"):
        recs = collect_run(client, qs, system, "r", progress=False)
        assert len(recs) == len(texts)
        paths.append(tmp_path / f"{system}.ndjson")
        write_raw_run(paths[-1], recs)
        for c in cases:  # after the first system, B gets clean answers
            fake.plan(f"poison {c}", "ok")
    agg, _hits = ingest(paths)
    agg = pl.from_arrow(agg)
    assert agg.height == 2 * len(texts)
    failed = agg.filter(pl.col("error").is_not_null())
    assert sorted(failed["system"].unique().to_list()) == ["sys_a"] and failed.height == len(cases)
    by_qid = dict(zip(qs["qid"], qs["text"]))
    for row in failed.iter_rows(named=True):
        case = by_qid[row["qid"]].removeprefix("poison ")
        assert re.match(EXPECTED[case], row["error"]), (case, row["error"])
    _tally("run:every_case_one_system", "isolated")


def test_an_unexpected_client_exception_fails_one_query(fake, monkeypatch, tmp_path, caplog):
    client = _client(fake)
    real = client.search

    def search(qid, text, system, *a, **kw):
        if qid == "q001":
            raise ValueError(f"Invalid header value b'Bearer {TOKEN}\\n'")  # what http.client says
        return real(qid, text, system, *a, **kw)

    monkeypatch.setattr(client, "search", search)
    with caplog.at_level(logging.DEBUG):
        recs = collect_run(client, _queries(["a", "b", "c"]), "sys", "r", progress=False)
    ok = _isolated(recs, 1, r"client_error:ValueError$", tmp_path, caplog)
    _tally("client:unexpected_exception", "isolated" if ok else "leak")
    assert ok


def test_a_record_the_writer_would_refuse_fails_one_query(fake, monkeypatch, tmp_path, caplog):
    """The last line of defence: whatever slips past the wire checks fails its query, not
    the raw-run file."""
    client = _client(fake)
    real = client.search

    def search(qid, text, system, *a, **kw):
        res = real(qid, text, system, *a, **kw)
        if qid == "q001":
            res.hits[0]["score"] = float("nan")
        return res

    monkeypatch.setattr(client, "search", search)
    recs = collect_run(client, _queries(["a", "b", "c"]), "sys", "r", progress=False)
    ok = _isolated(recs, 1, r"bad_value:record:ValueError", tmp_path, caplog)
    _tally("record:nan_past_the_wire_checks", "isolated" if ok else "leak")
    assert ok


def test_an_empty_qid_in_the_query_table_is_refused_before_any_request(fake):
    qs = _queries(["a", "b"]).with_columns(pl.Series("qid", ["q0", ""]))
    with pytest.raises(ValueError, match=r"row 1 column 'qid'"):
        collect_run(_client(fake), qs, "sys", "r", progress=False)
    assert fake.count() == 0
    _tally("query_table:empty_qid", "refused")


# --------------------------------------------------------------------------------------------
# 2. the hard cap holds on every body shape and error path
# --------------------------------------------------------------------------------------------
DRIPS = {
    "json_body": "dripbody:20",
    "error_body_503": "driperr:503:20",
    "error_body_500": "driperr:500:20",
    "error_body_404": "driperr:404:20",
    "ndjson_bytes": "dripbytes:20",
    "headers": "driphead:20",
    "ndjson_lines": "drip:400",
}


def test_a_dripping_answer_is_cut_at_the_hard_cap_on_every_shape(fake, caplog):
    names = sorted(DRIPS)
    for name in names:
        fake.plan(name, DRIPS[name])
    side: list[dict] = []
    client = _client(fake, concurrency=len(names))  # all at once: one cap of wall time
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        recs = collect_run(client, _queries(names), "sys", "r", progress=False, sidecar=side)
    wall = time.monotonic() - t0
    assert wall < CAP_S + 1.0, wall
    for name, rec, s in zip(names, recs, side):
        MEASURED[name] = s["client_ms"] / 1000.0
        cut = rec["error"] == "deadline_exceeded" and s["client_ms"] <= (CAP_S + CAP_SLACK_S) * 1000
        assert cut, (name, rec["error"], s["client_ms"])
        assert s["client_ms"] >= CAP_S * 1000 - 5 and rec["hits"] == []
        _tally(f"drip:{name}", "leak" if _leaks(caplog.text, json.dumps(rec)) else "caught")
    assert fake.wait_disconnects(len(names), timeout_s=3.0) >= len(names) - 1  # the fake saw us leave


def test_a_dripping_answer_is_cut_at_the_cap_when_hedged(fake):
    fake.plan("both drip", "dripbody:20", "dripbody:20")
    client = _client(fake, hedge=True, hedge_delay_ms=10)
    t0 = time.monotonic()
    res = client.search("q1", "both drip", "sys")
    took = time.monotonic() - t0
    MEASURED["json_body_hedged"] = took
    assert res.error == "deadline_exceeded" and res.hedged and took <= CAP_S + CAP_SLACK_S
    _tally("drip:json_body_hedged", "caught")


def test_a_5xx_then_a_dripping_retry_stays_within_one_cap(fake):
    fake.plan("flaky", "http:503", "driperr:503:20", "ok")
    t0 = time.monotonic()
    res = _client(fake).search("q1", "flaky", "sys")
    took = time.monotonic() - t0
    MEASURED["retry_then_error_body"] = took
    assert res.error == "deadline_exceeded" and res.attempts == 2 and took <= CAP_S + CAP_SLACK_S
    assert TOKEN not in res.error
    _tally("drip:retry_then_error_body", "caught")


def _dripping_tcp_server(stop: threading.Event) -> tuple[str, threading.Thread]:
    """Accepts connections and drips `HTTP/1.1 200 OK\\r\\nX: ...` one byte per 50 ms."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.1)

    def serve():
        conns = []
        try:
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                    conns.append(c)
                except socket.timeout:
                    pass
                for c in list(conns):
                    try:
                        c.send(b"H")
                    except OSError:
                        conns.remove(c)
                time.sleep(0.05)
        finally:
            for c in conns:
                c.close()
            srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", t


def test_a_dripping_health_probe_is_cut_at_its_cap():
    stop = threading.Event()
    url, t = _dripping_tcp_server(stop)
    try:
        c = LensClient(url, token=TOKEN, health_cap_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(LensUnreachable, match=r"did not answer within 0\.5 s") as ei:
            c.health(attempts=1)
        took = time.monotonic() - t0
        MEASURED["health_drip"] = took
        assert took < 0.5 + CAP_SLACK_S and TOKEN not in str(ei.value)
    finally:
        stop.set()
        t.join(timeout=2)
    _tally("drip:health", "caught")


# --------------------------------------------------------------------------------------------
# 3. config and auth fail fast, secrets never show
# --------------------------------------------------------------------------------------------
BAD_TOKENS = {
    "trailing_newline": TOKEN + "\n",
    "trailing_crlf": TOKEN + "\r\n",
    "inner_newline": TOKEN[:5] + "\n" + TOKEN[5:],
    "nul": TOKEN + "\x00",
    "tab": TOKEN + "\t",
    "space": TOKEN[:5] + " " + TOKEN[5:],
    "del": TOKEN + "\x7f",
    "non_ascii": TOKEN + "é",
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_a_token_with_control_characters_is_refused_without_showing_it(fake, monkeypatch, case, caplog):
    bad = BAD_TOKENS[case]
    with pytest.raises(ValueError) as e1:
        check_token(bad)
    with pytest.raises(ValueError) as e2:
        LensClient(fake.url, token=bad)
    errors = [e1, e2]
    if "\x00" not in bad:  # an environment variable cannot hold NUL
        monkeypatch.setenv("AUTH_TOKEN", bad)
        with pytest.raises(ValueError) as e3:
            LensClient(fake.url)  # from $AUTH_TOKEN
        monkeypatch.setenv("DATA_SOURCE", "prod")
        monkeypatch.setenv("LENS_ENDPOINTS", fake.url)
        with pytest.raises(ConfigError) as e4:
            preflight()
        assert e4.value.exit_code == 2 and "AUTH_TOKEN contains" in str(e4.value)
        errors += [e3, e4]
    assert fake.count() == 0 and not fake.requests  # nothing was sent
    texts = [str(e.value) for e in errors]
    assert all("\n" not in t and "the token is not shown" in t for t in texts)
    leaked = _leaks(*texts, caplog.text) or any(bad.strip() in t for t in texts)
    _tally(f"token:{case}", "leak" if leaked else "refused")
    assert not leaked


@pytest.mark.parametrize("status", [401, 403])
def test_401_or_403_on_health_ends_the_run_with_one_line(status, monkeypatch, caplog, tmp_path):
    wrong = TOKEN + "-revoked"
    with FakeLens(token=TOKEN, auth_status=status) as f:  # its refusal echoes the header it got
        client = LensClient(f.url, token=wrong, retries=3, backoff_ms=1)
        with caplog.at_level(logging.DEBUG), pytest.raises(LensAuthRefused) as ei:
            collect_run(client, _queries([f"q{i}" for i in range(50)]), "sys", "r", progress=False)
        assert f.count() == 0 and len(f.requests) == 1  # one /health, no retry, no query
        monkeypatch.setenv("DATA_SOURCE", "prod")
        monkeypatch.setenv("LENS_ENDPOINTS", f.url)
        monkeypatch.setenv("AUTH_TOKEN", wrong)
        suites = tmp_path / "suites.parquet"
        _queries(["a"]).write_parquet(suites)
        monkeypatch.setenv("LENS_SUITES", str(suites))
        with pytest.raises(AuthError) as pe:
            preflight()
    msg, pmsg = str(ei.value), str(pe.value)
    assert f"HTTP {status}" in msg and "check AUTH_TOKEN" in msg and "\n" not in msg and "Bearer ***" in msg
    assert pe.value.exit_code == 1 and f"HTTP {status}" in pmsg and "\n" not in pmsg
    leaked = _leaks(msg, pmsg, caplog.text, [r.args for r in caplog.records])
    _tally(f"auth:health_{status}", "leak" if leaked else "refused")
    assert not leaked


def test_401_on_every_query_trips_the_auth_breaker(caplog):
    wrong = TOKEN + "-x"
    with FakeLens(token=TOKEN, open_health=True) as f:
        client = LensClient(f.url, token=wrong, retries=2, backoff_ms=1, concurrency=2)
        with caplog.at_level(logging.DEBUG), pytest.raises(LensAuthRefused, match="first 8 queries all failed") as ei:
            collect_run(client, _queries([f"q{i}" for i in range(200)]), "sys", "r", progress=False)
        assert f.count() < 20  # no storm of 200 x 401
    leaked = _leaks(str(ei.value), caplog.text)
    _tally("auth:search_401_breaker", "leak" if leaked else "refused")
    assert not leaked


def test_preflight_without_a_health_route_probes_one_query(monkeypatch, tmp_path):
    suites = tmp_path / "suites.parquet"
    _queries(["a"]).write_parquet(suites)
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("LENS_SUITES", str(suites))
    with FakeLens(token=TOKEN, no_health=True) as f:
        monkeypatch.setenv("LENS_ENDPOINTS", f.url)
        assert preflight().health == {"status": "unknown", "http_status": 404} and f.count() == 1
        monkeypatch.setenv("AUTH_TOKEN", TOKEN + "-old")
        with pytest.raises(AuthError, match=r"a probe query returned http_4xx:401") as ei:
            preflight()
        assert f.count() == 2 and ei.value.exit_code == 1
    leaked = _leaks(str(ei.value))
    _tally("auth:no_health_route_probe_401", "leak" if leaked else "refused")
    assert not leaked


def test_dagster_event_log_never_holds_the_token_on_auth_failure(monkeypatch, caplog):
    """The in-job path (a scheduled run has no CLI pre-flight): the resource's collect fails
    with one LensAuthRefused; no event, log record or metadata holds the token."""
    wrong = TOKEN + "-stale"
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("AUTH_TOKEN", wrong)

    with FakeLens(token=TOKEN) as f:
        monkeypatch.setenv("LENS_ENDPOINTS", f.url)

        @dg.asset
        def collect_denied(context, lens_source: LensDataSource) -> None:
            base = SystemConfig(name="lens_v22")
            lens_source.collect(base, _queries(["a", "b"]), "rtok", 0.0, 10)

        caplog.set_level(logging.DEBUG)
        res = dg.materialize([collect_denied], resources={"lens_source": LensDataSource()}, raise_on_error=False)
    assert not res.success
    failures = [e for e in res.all_events if e.is_step_failure]
    assert len(failures) == 1 and "refused the credentials" in str(failures[0].event_specific_data.error)
    leaked = _leaks(caplog.text, *[str(e) for e in res.all_events])
    _tally("auth:dagster_event_log", "leak" if leaked else "refused")
    assert not leaked


def test_a_newline_token_in_the_resource_never_reaches_the_event_log(monkeypatch, caplog):
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("AUTH_TOKEN", TOKEN + "\n")
    with FakeLens(token=TOKEN) as f:
        monkeypatch.setenv("LENS_ENDPOINTS", f.url)

        @dg.asset
        def collect_newline(context, lens_source: LensDataSource) -> None:
            lens_source.collect(SystemConfig(name="lens_v22"), _queries(["a"]), "rtok", 0.0, 10)

        caplog.set_level(logging.DEBUG)
        res = dg.materialize([collect_newline], resources={"lens_source": LensDataSource()}, raise_on_error=False)
        assert not f.requests  # refused before anything was sent
    assert not res.success
    leaked = _leaks(caplog.text, *[str(e) for e in res.all_events])
    _tally("token:dagster_event_log", "leak" if leaked else "refused")
    assert not leaked


def test_credentials_refused_by_the_jobs_own_preflight_fail_the_run_without_a_page(monkeypatch, tmp_path, capfd):
    """The in-job path of `run_weekly` (no CLI in front: the job's first asset runs the pre-flight):
    query_suites fails with one AuthError, no later step runs, no gate runs on absent data, no P0
    page is sent, and the token is in no output, no event and no file of the data dir or the
    instance."""
    from lens_assets.run import run_weekly  # lazy: the Dagster job, for this test only

    suites = tmp_path / "suites.parquet"
    _queries(["a", "b"]).write_parquet(suites)
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("LENS_SUITES", str(suites))
    monkeypatch.setenv("AUTH_TOKEN", TOKEN + "-revoked")
    pager = _PagerReceiver()
    try:
        with FakeLens(token=TOKEN) as f:
            monkeypatch.setenv("LENS_ENDPOINTS", f.url)
            res = run_weekly("2026-11-08", pager=PagerResource(url=pager.url))
            assert f.count() == 0  # refused at /health: no query was sent
    finally:
        pager.close()
    out, err = capfd.readouterr()
    assert not res["success"] and res["auth_refused"] and "paged" not in res and pager.posts == []
    assert (
        len(res["errors"]) == 1
        and res["errors"][0].startswith("query_suites: ")
        and "refused the credentials" in res["errors"][0]
    )
    assert res["failed_checks"] == [] and not res["blocked_by_gates"]  # no gate ran on absent data
    assert "FAIL" not in out  # the refusal is the caller's one line, not a failed step's
    roots = [Path(os.environ["LENS_DATA_DIR"])] + (
        [Path(os.environ["DAGSTER_HOME"])] if os.environ.get("DAGSTER_HOME") else []
    )
    leaked = _leaks(out, err, json.dumps(res, default=str)) or any(_files_hold(r, TOKEN.encode()) for r in roots)
    _tally("auth:job_preflight_no_page", "leak" if leaked else "refused")
    assert not leaked


def test_the_oss_json_shape_names_repo_and_path_prefix_and_marks_why_unknown(tmp_path):
    """`LensClient(..., repo=, path_prefix=)` on the open-source Lens JSON shape: each result's
    path gets the prefix, the repo is the one given, why is the sentinel ["unknown"] (never
    empty), and the raw run it makes is ingested (no reason flag on its hits)."""
    from lens_core.collect.wire import check_oss_result

    assert check_oss_result({"file_path": "json/decoder.py", "line_number": 3}, 0, "cpython", "Lib/") == {
        "rank": 1,
        "repo": "cpython",
        "path": "Lib/json/decoder.py",
        "start_line": 3,
        "end_line": 3,
        "score": 0.0,
        "why": ["unknown"],
        "shard": None,
    }
    with pytest.raises(ValueError, match="path_prefix"):
        LensClient("http://127.0.0.1:9", path_prefix="a\x00b")
    with FakeLens(default="oss", hits=3) as f:
        client = LensClient(f.url, repo="cpython", path_prefix="Lib/", k=3)
        recs = collect_run(client, _queries(["a", "b"]), "oss_lens", "r", progress=False, check_health=False)
    hits = [h for r in recs for h in r["hits"]]
    assert len(hits) == 6 and all(h["path"].startswith("Lib/") and h["repo"] == "cpython" for h in hits)
    assert all(h["why"] == ["unknown"] for h in hits)
    path = raw_run_path(tmp_path, "staging", "r", "oss_lens")
    write_raw_run(path, recs)
    _, table = ingest([path])
    t = pl.from_arrow(table)
    assert t.height == 6 and not t.select(pl.any_horizontal("why_lex", "why_struct", "why_sem").any()).item()


JOB_CASES = {
    # case: (env, refusal class, what the one line says)
    "token_control_char": ({"AUTH_TOKEN": TOKEN + "\x07"}, "ConfigError", "AUTH_TOKEN contains a control character"),
    "health_401": ({"AUTH_TOKEN": TOKEN + "-x"}, "AuthError", "HTTP 401"),
    "health_403": ({"AUTH_TOKEN": TOKEN + "-x", "_status": "403"}, "AuthError", "HTTP 403"),
    "bad_sla": ({"AUTH_TOKEN": TOKEN, "SLA_MS": "fast"}, "ConfigError", "SLA_MS='fast'"),
    "unsafe_system_name": (
        {"AUTH_TOKEN": TOKEN, "_config": "baseline:\n  name: ../../x\n"},
        "ConfigError",
        "path-safe",
    ),
    # the control: a run that fails in the same step for another reason (the suites file is not
    # Parquet) is not a refusal, and the sensor pages its planned blocking checks
    "control_not_a_refusal": ({"AUTH_TOKEN": TOKEN, "_suites": "not parquet"}, None, ""),
}


@pytest.mark.parametrize("case", sorted(JOB_CASES))
def test_a_daemon_launched_weekly_run_runs_the_preflight_and_pages_nothing(case, monkeypatch, tmp_path):
    """A run of weekly_lens_job as a schedule or the UI starts it (no CLI, no pre-flight before
    it): the job's first asset runs the pre-flight. The run ends at query_suites with one line
    (the token never in it), no later step runs, no check is evaluated, the run is tagged
    refused, and the paging sensor pages nothing for its planned blocking checks."""
    from lens_assets.definitions import defs  # lazy: the Dagster job, for this test only
    from lens_assets.paging_sensor import evaluate_paging

    env, cls, says = JOB_CASES[case]
    monkeypatch.setenv("LENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATA_SOURCE", "prod")
    suites = tmp_path / "suites.parquet"
    _queries(["a", "b"]).write_parquet(suites)
    if "_suites" in env:
        suites.write_text(env["_suites"])
    monkeypatch.setenv("LENS_SUITES", str(suites))
    for k, v in env.items():
        if not k.startswith("_"):
            monkeypatch.setenv(k, v)
    if "_config" in env:
        (tmp_path / "lens.yaml").write_text(env["_config"])
        monkeypatch.setenv("LENS_CONFIG", str(tmp_path / "lens.yaml"))
    pager = _PagerReceiver()
    logs: list[str] = []
    log = type("L", (), {"error": logs.append, "info": logs.append, "warning": logs.append})()
    try:
        with dg.instance_for_test() as instance, FakeLens(token=TOKEN, auth_status=int(env.get("_status", 401))) as f:
            monkeypatch.setenv("LENS_ENDPOINTS", f.url)
            graph = defs.get_repository_def().asset_graph
            pr = PagerResource(url=pager.url)
            cursor, _ = evaluate_paging(instance, graph, pr, None, log)  # the sensor's first tick: seeded
            res = defs.resolve_job_def("weekly_lens_job").execute_in_process(
                partition_key="2026-11-08", instance=instance, raise_on_error=False
            )
            cursor, summary = evaluate_paging(instance, graph, pr, cursor, log)
            run = instance.get_run_by_id(res.run_id)
            searched = f.count()
    finally:
        pager.close()
    failures = [e for e in res.all_events if e.is_step_failure]
    checks = [e for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    err = failures[0].event_specific_data.error if failures else None
    while err is not None and err.cause is not None:
        err = err.cause
    assert not res.success and len(failures) == 1 and failures[0].step_key == "query_suites"
    assert checks == [] and searched == 0  # no gate evaluated, no query sent
    if cls is None:  # the control: the sensor does page a run that failed for another reason
        assert "lens/refused" not in run.tags and err.cls_name not in REFUSAL_ERRORS
        assert pager.posts and json.loads(cursor)["incidents"], summary
        return
    assert err.cls_name == cls and says in err.message and "\n" not in err.message.strip()
    assert run.tags.get("lens/refused") == cls
    assert pager.posts == [] and json.loads(cursor)["incidents"] == {} and "paged 0" in summary
    assert not (tmp_path / "data" / "runs").exists()
    leaked = _leaks(*[str(e) for e in res.all_events], summary, *logs)
    _tally(f"job:{case}", "leak" if leaked else "refused")
    assert not leaked


class _RevokedAfter:
    """The fake's token until `n` queries were served, then another: credentials revoked mid-run
    (the fake formats its expected bearer token per request)."""

    def __init__(self, fake: FakeLens, n: int):
        self.fake, self.n = fake, n

    def __format__(self, spec: str) -> str:
        return TOKEN if self.fake.count() <= self.n else TOKEN + "-rotated"


def test_credentials_revoked_mid_run_fail_the_run_without_a_page(monkeypatch, tmp_path, capfd):
    """The pre-flight passed and 3 queries were answered, then the token was revoked: the run
    ends with one LensAuthRefused in raw_runs, no gate runs, no P0 page (neither run_weekly's
    nor the paging sensor's, which sees the run's planned blocking checks), nothing leaks."""
    from lens_assets.definitions import defs  # lazy: the Dagster job, for this test only
    from lens_assets.paging_sensor import evaluate_paging
    from lens_assets.run import dagster_instance, run_weekly

    suites = tmp_path / "suites.parquet"
    _queries(["a", "b"]).write_parquet(suites)
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("LENS_SUITES", str(suites))
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    pager = _PagerReceiver()
    try:
        graph = defs.get_repository_def().asset_graph
        logs: list[str] = []
        log = type("L", (), {"error": logs.append, "info": logs.append, "warning": logs.append})()
        with dagster_instance() as instance:
            cursor, _ = evaluate_paging(instance, graph, PagerResource(url=pager.url), None, log)
        with FakeLens(token=TOKEN) as f:
            f.token = _RevokedAfter(f, 3)
            monkeypatch.setenv("LENS_ENDPOINTS", f.url)
            res = run_weekly("2026-11-08", pager=PagerResource(url=pager.url))
            answered = [r for r in f.requests if r["path"] == "/search"]
        with dagster_instance() as instance:
            cursor, summary = evaluate_paging(instance, graph, PagerResource(url=pager.url), cursor, log)
            planned = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                sorted(graph.asset_check_keys, key=str)
            )
    finally:
        pager.close()
    assert any(r.run_id == res["run_id"] for r in planned.values())  # the run planned blocking checks
    assert json.loads(cursor)["incidents"] == {} and "paged 0" in summary, summary
    out, err = capfd.readouterr()
    assert len(answered) >= 4  # some queries were answered before the refusal
    assert not res["success"] and res["auth_refused"] and "paged" not in res and pager.posts == []
    assert len(res["errors"]) == 1 and res["errors"][0].startswith("raw_runs.collect_systems[")
    assert "refused the credentials" in res["errors"][0]
    assert res["failed_checks"] == [] and not res["blocked_by_gates"]
    assert "FAIL" not in out and "skip" not in out
    leaked = _leaks(out, err, json.dumps(res, default=str)) or bool(
        _files_hold(Path(os.environ["LENS_DATA_DIR"]), TOKEN.encode())
    )
    _tally("auth:revoked_mid_run_no_page", "leak" if leaked else "refused")
    assert not leaked


class _PagerReceiver:
    def __init__(self):
        self.posts: list[bytes] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.posts.append(self.rfile.read(n))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v2/enqueue"
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def _lens_eval_run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    data.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    full = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "LENS_CONFIG", "LENS_ENDPOINTS")}
    full.update({"LENS_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}, **env)
    return subprocess.run(
        [sys.executable, "-m", "lens_cli.main", "run", "--partition", "2026-11-08", *args],
        cwd=tmp_path,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _files_hold(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize(
    "case,token,status,code",
    [("wrong_401", TOKEN + "-x", 401, 1), ("wrong_403", TOKEN + "-x", 403, 1), ("newline", TOKEN + "\n", 401, 2)],
)
def test_lens_eval_run_with_a_bad_token_is_one_line_and_leaks_nothing(tmp_path, case, token, status, code):
    """`lens-eval run --source prod`: exit 1 (refused) or 2 (bad setting), ONE line on stderr,
    nothing on stdout, no job, no gate, no page; the token in no output and no file."""
    pager = _PagerReceiver()
    suites = tmp_path / "suites.parquet"
    _queries(["a", "b"]).write_parquet(suites)
    try:
        with FakeLens(token=TOKEN, auth_status=status) as f:
            env = {"AUTH_TOKEN": token, "LENS_ENDPOINTS": f.url, "LENS_SUITES": str(suites), "PAGER_URL": pager.url}
            p = _lens_eval_run(tmp_path, env, "--source", "prod")
            sent = list(f.requests)
    finally:
        pager.close()
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("lens-eval: error: ") and p.stdout == ""
    assert (
        ("refused the credentials" in lines[0] and f"HTTP {status}" in lines[0])
        if code == 1
        else "AUTH_TOKEN contains a control character" in lines[0]
    )
    assert [r["path"] for r in sent] == ([] if code == 2 else ["/health"])  # no query was sent
    assert pager.posts == []  # no P0 page
    assert not (tmp_path / "data" / "runs").exists() and not (tmp_path / "data" / "paging").exists()
    leaked = _leaks(p.stdout, p.stderr) or bool(_files_hold(tmp_path, TOKEN.encode()))
    _tally(f"cli:{case}", "leak" if leaked else "refused")
    assert not leaked


def test_lens_eval_run_with_credentials_revoked_mid_run_is_one_line(tmp_path):
    """`lens-eval run --source prod` (launched through the code location, as make demo does): the
    pre-flight passes, 3 queries are answered, then the token is revoked. The terminal shows the
    progress of the steps that ran and then ONE line on stderr (no FAIL line, no skipped steps,
    no summary), exit 1, no P0 page, and the token in no output and no file."""
    new_dagster_home(tmp_path / "dagster_home")  # an instance with its dagster.yaml (no warning on stderr)
    pager = _PagerReceiver()
    suites = tmp_path / "suites.parquet"
    _queries(["a", "b"]).write_parquet(suites)
    try:
        with FakeLens(token=TOKEN) as f:
            f.token = _RevokedAfter(f, 3)
            env = {"AUTH_TOKEN": TOKEN, "LENS_ENDPOINTS": f.url, "LENS_SUITES": str(suites), "PAGER_URL": pager.url}
            p = _lens_eval_run(tmp_path, env, "--source", "prod")
            answered = f.count()
    finally:
        pager.close()
    # stderr may also hold the run process's Python WARNING records (a failed query, the prod
    # ground-truth note): library logging, not the command's report. The report is one line.
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("lens-eval:")]
    assert p.returncode == 1, (p.stdout[-2000:], p.stderr[-2000:])
    assert answered >= 4 and len(lines) == 1, (p.stdout[-2000:], p.stderr[-3000:])
    assert lines[0].startswith("lens-eval: error: raw_runs.collect_systems[") and "refused the credentials" in lines[0]
    assert not any(w in p.stdout for w in ("FAIL", "skip", "NOT PUBLISHED", "error:", "fingerprint:")), p.stdout
    assert pager.posts == [] and not (tmp_path / "data" / "paging").exists()
    leaked = _leaks(p.stdout, p.stderr) or bool(_files_hold(tmp_path, TOKEN.encode()))
    _tally("cli:revoked_mid_run", "leak" if leaked else "refused")
    assert not leaked


# --------------------------------------------------------------------------------------------
# 3. system names are path-safe identifiers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../x", "/etc/x", "a/b", "..", ".hidden", "-x", "a b", "x\n", "", "a" * 129])
def test_a_name_that_is_not_a_path_safe_identifier_is_refused(name, tmp_path):
    with pytest.raises(ValueError, match="not a path-safe identifier"):
        check_safe_name(name, "system name")
    with pytest.raises(ValueError):
        SystemConfig(name=name)
    with pytest.raises(ValueError, match="not a path-safe identifier"):
        raw_run_path(tmp_path, "staging", "r", name)
    with pytest.raises(ValueError, match="not a path-safe identifier"):
        raw_run_path(tmp_path, name or "..", "r", "sys")
    _tally(f"name:{name[:12]!r}", "refused")


def test_path_safe_names_of_the_shipped_config_pass():
    for name in ("lens_v22", "lens_v22__aa", "lexical_pack_a__pb1.25_w16", "router_pack_b__mcg0.03_tau0.58_cap4"):
        assert check_safe_name(name, "system name") == name


CONFIGS = {
    "baseline_name": "baseline:\n  name: ../../../x\n",
    "tail_name": "tail_taming:\n  name: ../escape\n",
    "pack_name": "packs:\n  ../p:\n    grid: {phrase_boost: [1.1]}\n    demo: [{phrase_boost: 1.1}]\n",
    "run_env": "run:\n  env: ../../etc\n",
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_config_with_an_unsafe_name_is_refused_before_anything_is_written(case, tmp_path, monkeypatch):
    cfg = tmp_path / "lens.yaml"
    cfg.write_text(CONFIGS[case])
    monkeypatch.setenv("LENS_CONFIG", str(cfg))
    monkeypatch.setenv("DATA_SOURCE", "sim")
    with pytest.raises(ConfigError, match="not a path-safe identifier") as ei:
        preflight()
    assert ei.value.exit_code == 2 and "\n" not in str(ei.value)
    _tally(f"config:{case}", "refused")


def test_lens_eval_run_with_an_unsafe_system_name_exits_2_and_writes_nothing(tmp_path):
    cfg = tmp_path / "lens.yaml"
    cfg.write_text(CONFIGS["baseline_name"])
    p = _lens_eval_run(tmp_path, {"LENS_CONFIG": str(cfg)}, "--source", "sim")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.stdout[-2000:], p.stderr[-2000:])
    assert len(lines) == 1 and "system name '../../../x' is not a path-safe identifier" in lines[0]
    assert p.stdout == "" and not any((tmp_path / "data").rglob("*")) and not list(tmp_path.rglob("x.ndjson"))
    _tally("cli:unsafe_system_name", "refused")


def test_a_config_error_is_one_line_exit_2_not_a_gate_failure(tmp_path):
    p = _lens_eval_run(tmp_path, {"SLA_MS": "fast"}, "--source", "sim")
    assert p.returncode == 2 and p.stderr.strip() == "lens-eval: error: SLA_MS='fast': expected a number"
    assert p.stdout == "" and not any((tmp_path / "data").rglob("*"))
    _tally("cli:bad_sla_ms", "refused")


# --------------------------------------------------------------------------------------------
# the tally
# --------------------------------------------------------------------------------------------
def test_zz_tally(capsys):
    """Runs last in this module: prints the tally (past pytest's capture); no case may leak."""
    counts = {k: sum(1 for _, o in TALLY if o == k) for k in ("isolated", "refused", "caught", "leak")}
    cut = max((v for k, v in MEASURED.items() if k != "health_drip"), default=float("nan"))
    line = (
        f"endpoint fault tally: tried {len(TALLY)}, isolated {counts['isolated']}, refused {counts['refused']}, "
        f"caught {counts['caught']}, leaks {counts['leak']}; slowest dripping body cut after {cut:.2f} s "
        f"(cap {CAP_S} s)"
    )
    with capsys.disabled():
        print("\n" + line)
        for name, took in sorted(MEASURED.items()):
            print(f"  cut {name}: {took:.3f} s")
    assert counts["leak"] == 0, [c for c, o in TALLY if o == "leak"]
