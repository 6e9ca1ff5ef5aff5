"""Interleaved collection (issue 17): every system answers the same query close in time, one
shared pool, seeded order, bounded memory, and the guarantees of `collect_run` kept."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from lens_core.collect.client import LensAuthRefused, LensClient, LensUnreachable, collect_run
from lens_core.collect.interleave import (
    build_clients,
    client_key,
    collect_interleaved,
    derive_seed,
    interleaved_order,
)
from lens_core.collect.rawruns import RECORD_KEYS, RawRunWriter, encode_record, write_raw_run
from lens_core.common.systems import SystemConfig

try:
    from tests.fake_lens import FakeLens
except ImportError:
    from fake_lens import FakeLens

TOKEN = "tok-interleave-Zq81-never-log-me"
# fields that are time measurements (differ between any two runs); everything else must match
TIMING = ("req_ts", "lat_ms", "shards")


def _queries(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "qid": [f"q{i:04d}" for i in range(n)],
            "text": [f"text number {i}" for i in range(n)],
            "suite": ["nl" if i % 2 else "identifier" for i in range(n)],
            "intent": ["nl" if i % 2 else "identifier" for i in range(n)],
            "language": ["python"] * n,
        }
    )


def _systems(*names: str, **kw) -> list[SystemConfig]:
    return [SystemConfig(name=n, **kw) for n in names]


def _client(url: str, **kw) -> LensClient:
    kw.setdefault("backoff_ms", 1)
    kw.setdefault("retries", 0)
    kw.setdefault("sla_ms", 500)
    return LensClient(url, **kw)


def _run(tmp: Path, url: str, systems, queries, **kw):
    client = _client(url, **kw.pop("client_kw", {}))
    clients = {s.name: client for s in systems}
    paths = {s.name: tmp / f"{s.name}.ndjson" for s in systems}
    kw.setdefault("progress", False)
    out = collect_interleaved(systems, clients, queries, "r1", paths, **kw)
    return out, paths


def _read(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"type": "done", "records": len(lines) - 1}
    return [json.loads(x) for x in lines[:-1]]


def _search_order(fake: FakeLens) -> list[tuple[str, str]]:
    return [(r["q"], r["system"]) for r in fake.requests if r["path"] == "/search"]


# -- the order ---------------------------------------------------------------------------------
def test_order_covers_every_pair_once_blockwise_and_is_seeded():
    order = list(interleaved_order(10, 3, block=1, seed=5))
    assert sorted(order) == [(q, s) for q in range(10) for s in range(3)]
    # round-robin per query: positions 3i..3i+2 are query i, each system once
    for i in range(10):
        assert {q for q, _ in order[3 * i : 3 * i + 3]} == {i}
        assert {s for _, s in order[3 * i : 3 * i + 3]} == {0, 1, 2}
    assert order == list(interleaved_order(10, 3, block=1, seed=5))  # reproducible
    others = [list(interleaved_order(10, 3, block=1, seed=s)) for s in range(6, 12)]
    assert any(o != order for o in others)  # the seed decides the order
    # the systems' order varies from query to query (not always the same system first)
    assert len({order[3 * i][1] for i in range(10)}) > 1
    # blocks of 4: within a block each system answers the block's queries in a row
    b = list(interleaved_order(10, 2, block=4, seed=1))
    assert sorted(b) == [(q, s) for q in range(10) for s in range(2)]
    assert [q for q, _ in b[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert len({s for _, s in b[:4]}) == 1 and len({s for _, s in b[4:8]}) == 1
    assert [q for q, _ in b[16:]] == [8, 9, 8, 9]
    with pytest.raises(ValueError):
        list(interleaved_order(3, 2, block=0))


def test_derived_seed_is_stable_and_differs_by_run():
    assert derive_seed(7, "2026-W10") == derive_seed(7, "2026-W10")
    assert derive_seed(7, "2026-W10") != derive_seed(7, "2026-W11")
    assert derive_seed(7, "2026-W10") != derive_seed(8, "2026-W10")


def test_requests_go_out_in_the_seeded_interleaved_order(tmp_path):
    systems = _systems("a", "b", "c")
    q = _queries(12)
    texts = q["text"].to_list()
    with FakeLens() as f:
        out, _ = _run(tmp_path, f.url, systems, q, seed=11, concurrency=1)
        first = _search_order(f)
    want = [(texts[qi], systems[si].name) for qi, si in interleaved_order(12, 3, 1, 11)]
    assert first == want
    assert out["seed"] == 11 and out["block"] == 1 and out["concurrency"] == 1
    with FakeLens() as f:
        _run(tmp_path / "again", f.url, systems, q, seed=11, concurrency=1)
        again = _search_order(f)
    with FakeLens() as f:
        _run(tmp_path / "other", f.url, systems, q, seed=12, concurrency=1)
        other = _search_order(f)
    assert again == first and other != first and sorted(other) == sorted(first)


def _max_lead(records_by_system: dict[str, list[dict]]) -> int:
    """The most queries any system had answered (by req_ts) beyond the query every system had
    reached: 0 = perfectly interleaved; sequential collection gives n - 1."""
    events = sorted((r["req_ts"], name, i) for name, recs in records_by_system.items() for i, r in enumerate(recs))
    reached = {name: -1 for name in records_by_system}
    lead = 0
    for _ts, name, i in events:
        reached[name] = max(reached[name], i)
        lead = max(lead, max(reached.values()) - min(reached.values()))
    return lead


def test_every_system_answers_query_i_close_in_time_sequential_does_not(tmp_path):
    systems = _systems("a", "b", "c")
    q = _queries(40)
    with FakeLens(service_ms=5) as f:
        out, paths = _run(tmp_path, f.url, systems, q, seed=3, concurrency=4)
        recs = {s.name: _read(paths[s.name]) for s in systems}
        # all systems share ONE pool of 4: never more in flight. The fake counts a request from
        # its arrival until its handler thread returns, which is after the client already has the
        # whole answer and may have sent its next request: one such overlap is the server's
        # bookkeeping, not a fifth worker (a pool of 8 or a per-system pool would show >= 6)
        assert f.max_inflight <= 4 + 1
    # within the concurrency slack (4 workers over 3 systems: 2 queries apart, +1 for scheduling noise)
    assert _max_lead(recs) <= 3, _max_lead(recs)
    with FakeLens(service_ms=5) as f:
        c = _client(f.url, concurrency=4)
        seq = {s.name: collect_run(c, q, s.name, "r1", progress=False) for s in systems}
    assert _max_lead(seq) >= 39  # the check can fail: one system after another
    assert out["tasks"] == 120


def test_the_shared_pool_is_shared_fairly_no_system_starves(tmp_path):
    systems = _systems("fast_and_many", "other", "third")
    q = _queries(60)
    with FakeLens(service_ms=8) as f:
        _run(tmp_path, f.url, systems, q, seed=1, concurrency=3)
        order = _search_order(f)
    assert len(order) == 180
    # in every prefix of the arrival order each system has its share within the slack
    for cut in range(3, 181, 3):
        counts = [sum(1 for _, s in order[:cut] if s == sys_.name) for sys_ in systems]
        assert max(counts) - min(counts) <= 4, (cut, counts)


# -- what is recorded --------------------------------------------------------------------------
def test_records_are_in_query_order_and_match_the_sequential_path(tmp_path):
    systems = _systems("lens_v22", "lens_v22__aa")
    q = _queries(25)
    with FakeLens() as f:
        out, paths = _run(tmp_path, f.url, systems, q, seed=9, concurrency=4)
        c = _client(f.url, concurrency=4)
        seq = {s.name: collect_run(c, q, s.name, "r1", progress=False) for s in systems}
    for s in systems:
        got = _read(paths[s.name])
        assert [r["qid"] for r in got] == q["qid"].to_list()
        assert all(list(r) == list(RECORD_KEYS) for r in got)
        assert all(r["system"] == s.name and r["error"] is None and r["cfg_hash"] == "feedc0de12345678" for r in got)
        strip = [{k: v for k, v in r.items() if k not in TIMING} for r in got]
        assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in seq[s.name]]
        info = out["systems"][s.name]
        assert info["records"] == 25 and info["errors"] == 0 and len(info["sha256"]) == 64


def test_an_invalid_answer_fails_that_query_only(tmp_path):
    systems = _systems("a", "b")
    q = _queries(10)
    bad_text = q["text"][4]
    with FakeLens() as f:
        f.plan(bad_text, "bad:nan_score")  # the first request for that text, whichever system
        out, paths = _run(tmp_path, f.url, systems, q, seed=2, concurrency=3)
    recs = {s.name: _read(paths[s.name]) for s in systems}
    failed = [(n, r["qid"], r["error"]) for n, rs in recs.items() for r in rs if r["error"]]
    assert len(failed) == 1 and failed[0][1] == "q0004" and failed[0][2].startswith("bad_value"), failed
    name = failed[0][0]
    assert out["systems"][name]["errors"] == 1 and sum(i["errors"] for i in out["systems"].values()) == 1
    assert all(len(rs) == 10 for rs in recs.values())


def test_unreachable_endpoint_trips_the_breaker_and_writes_nothing(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    systems = _systems("a", "b")
    with pytest.raises(LensUnreachable, match="first 4 queries"):
        _run(
            tmp_path,
            f"http://127.0.0.1:{port}",
            systems,
            _queries(50),
            check_health=False,
            unreachable_after=4,
            client_kw={"timeout_connect_s": 0.2},
        )
    assert not list(tmp_path.glob("*.ndjson"))
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_refused_credentials_trip_the_breaker_redacted(tmp_path):
    systems = _systems("a", "b", "c")
    with FakeLens(token="right-token", open_health=True) as f:
        with pytest.raises(LensAuthRefused) as ei:
            _run(tmp_path, f.url, systems, _queries(40), unreachable_after=6, client_kw={"token": TOKEN})
        sent = f.count()
    assert TOKEN not in str(ei.value) and "401" in str(ei.value)
    assert sent < 40  # the run stopped early, it did not send all 120
    assert not list(tmp_path.glob("*.ndjson")) and not list(tmp_path.glob(".*"))


def test_an_earlier_file_survives_a_failed_run(tmp_path):
    path = tmp_path / "a.ndjson"
    path.write_text("old\n")
    with pytest.raises(LensUnreachable):
        collect_interleaved(
            _systems("a"),
            {"a": _client("http://127.0.0.1:9", timeout_connect_s=0.2)},
            _queries(3),
            "r1",
            {"a": path},
            progress=False,
        )
    assert path.read_text() == "old\n"


# -- memory ------------------------------------------------------------------------------------
def test_buffering_is_bounded_by_the_window_under_a_slow_query(tmp_path):
    systems = _systems("a", "b")
    q = _queries(400)
    with FakeLens() as f:
        f.plan(q["text"][1], "slow:400")  # holds back one system's file while the rest run on
        out, paths = _run(tmp_path, f.url, systems, q, seed=4, concurrency=4, window=16)
    assert out["window"] == 16
    assert 0 < out["max_buffered"] <= 16, out["max_buffered"]
    for s in systems:
        assert [r["qid"] for r in _read(paths[s.name])] == q["qid"].to_list()
    # without a window (64 x concurrency) the slow query lets far more pile up: the bound is real
    with FakeLens() as f:
        f.plan(q["text"][1], "slow:400")
        wide, _ = _run(tmp_path / "wide", f.url, systems, q, seed=4, concurrency=4)
    assert wide["max_buffered"] > 16


# -- clients and the writer ----------------------------------------------------------------------
def test_one_client_per_endpoint_repo_and_prefix():
    made = []

    def make(s):
        made.append(s.name)
        return LensClient(s.endpoint or "http://127.0.0.1:1", repo=s.repo)

    systems = [
        SystemConfig(name="a"),
        SystemConfig(name="b"),
        SystemConfig(name="c", endpoint="http://127.0.0.1:2"),
        SystemConfig(name="d", repo="other"),
        SystemConfig(name="e", repo="other", path_prefix="src/"),
        SystemConfig(name="f", endpoint="http://127.0.0.1:2"),
    ]
    clients = build_clients(systems, make)
    assert made == ["a", "c", "d", "e"]
    assert clients["a"] is clients["b"] and clients["c"] is clients["f"]
    assert len({id(c) for c in clients.values()}) == 4
    assert client_key(systems[0], "http://x") == ("http://x", None, "")


def test_params_of_each_system_are_sent(tmp_path):
    systems = [SystemConfig(name="a", params={"arms": "lex"}), SystemConfig(name="b")]
    seen: list[tuple[str, dict | None]] = []

    class Recording(LensClient):
        def search(self, qid, text, system, deadline_ms=None, extra=None):
            seen.append((system, extra))
            return super().search(qid, text, system, deadline_ms, extra)

    with FakeLens() as f:
        c = Recording(f.url, retries=0)
        collect_interleaved(
            systems, {"a": c, "b": c}, _queries(4), "r1", {s.name: tmp_path / s.name for s in systems}, progress=False
        )
    assert [x for s, x in seen if s == "a"] == [{"arms": "lex"}] * 4
    assert all(not x for s, x in seen if s == "b")


def test_streaming_writer_matches_write_raw_run_and_aborts_cleanly(tmp_path):
    recs = [
        {k: None for k in RECORD_KEYS}
        | {"qid": f"q{i}", "hits": [], "shards": [], "cost": {}, "req_ts": 1.0, "sla_ms": 150.0, "lat_ms": 2.0}
        for i in range(3)
    ]
    info = write_raw_run(tmp_path / "x.ndjson", recs)
    want = "".join(encode_record(r) + "\n" for r in recs) + '{"type":"done","records":3}\n'
    assert (tmp_path / "x.ndjson").read_text() == want and info["records"] == 3
    w = RawRunWriter(tmp_path / "x.ndjson")
    w.write(recs[0])
    assert (tmp_path / "x.ndjson").read_text() == want  # not in place before commit
    w.abort()
    assert (tmp_path / "x.ndjson").read_text() == want and not list(tmp_path.glob(".*"))
    with pytest.raises(ValueError):
        w.write(recs[0])
    with RawRunWriter(tmp_path / "y.ndjson") as w2:
        for r in recs:
            w2.write(r)
    assert (tmp_path / "y.ndjson").read_text() == want
    with pytest.raises(RuntimeError):
        with RawRunWriter(tmp_path / "z.ndjson") as w3:
            w3.write(recs[0])
            raise RuntimeError("boom")
    assert not (tmp_path / "z.ndjson").exists() and not list(tmp_path.glob(".*"))


class _RevokedAfter:
    """A server-side token that stops matching after `n` /search requests."""

    def __init__(self, fake: FakeLens, n: int):
        self.fake, self.n = fake, n

    def __format__(self, spec: str) -> str:
        return TOKEN if self.fake.count() <= self.n else TOKEN + "-rotated"


def test_credentials_revoked_mid_run_trip_the_breaker_of_the_system_that_never_got_through(tmp_path):
    # the breaker is per system, as in collect_run: answers given to one system before the
    # revocation do not keep the run going on with every later query refused
    systems = _systems("a", "b", "c")
    with FakeLens(token=TOKEN) as f:
        f.token = _RevokedAfter(f, 3)
        with pytest.raises(LensAuthRefused) as ei:
            _run(tmp_path, f.url, systems, _queries(20), unreachable_after=4, client_kw={"token": TOKEN})
        sent = f.count()
    assert TOKEN not in str(ei.value) and sent < 60
    assert not list(tmp_path.glob("*.ndjson")) and not list(tmp_path.glob(".*"))


def test_progress_is_a_line_per_tenth_with_each_systems_errors(tmp_path, caplog):
    import logging

    systems = _systems("a", "b")
    q = _queries(20)
    with FakeLens() as f:
        f.plan(q["text"][0], "http:404")
        with caplog.at_level(logging.INFO, logger="lens_core.collect.interleave"):
            _run(tmp_path, f.url, systems, q, seed=0, concurrency=2, progress=True)
    lines = [r.getMessage() for r in caplog.records if "answers (" in r.getMessage()]
    assert len(lines) == 10 and lines[-1].startswith("lens interleaved: 40/40 answers (100%)")
    assert lines[-1].endswith(("errors per system: a 1, b 0", "errors per system: a 0, b 1"))
