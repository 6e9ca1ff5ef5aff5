"""DATA_SOURCE=local/prod: the Lens client against the REAL reference engine over loopback, the
engine server's lifecycle, the resource, the engine assets, and sim-vs-HTTP ingestion parity.

Small corpus (whole packages, 250 functions: the same subset as tests/engine, so the shared
cache at $LENS_CACHE_DIR is warm after the first run). Fault-injection tests use one in-process
engine server (its faults are read from the environment per request); lifecycle tests start
the engine as a subprocess exactly as the pipeline does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lens_core.collect.client import LensClient, LensUnreachable, collect_run
from lens_core.collect.rawruns import RECORD_KEYS, write_raw_run
from lens_core.common.settings import cache_dir as settings_cache_dir
from lens_core.common.systems import SystemConfig, all_systems
from lens_engine.launcher import EngineServer, EngineStartError, manifest_text, write_manifest
from resources.data_source import LensDataSource, cap_suites, ingestion_parity, parse_suite_caps, read_query_file

SMALL = 250
TOKEN = "tok-Lens-9f3Kq-never-log-me"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def cache() -> Path:
    d = settings_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def small_env():
    """LENS_CORPUS_MAX_FUNCTIONS for the whole module (module-scoped monkeypatch)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LENS_CORPUS_MAX_FUNCTIONS", str(SMALL))
    mp.setenv("LENS_ENGINE_STRAGGLER_P", "0")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def engine(cache, small_env):
    from lens_engine.engine import Engine, StragglerModel

    eng = Engine.load(cache, max_functions=SMALL, straggler=StragglerModel(p=0.0), progress=False)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine):
    """The real engine behind its real HTTP server on loopback, in this process: its fault
    injection reads LENS_ENGINE_FAULT / LENS_ENGINE_DELAY_MS / LENS_ENGINE_TOKEN per request."""
    from lens_engine.server import make_server, serve_in_thread

    srv = make_server(engine, "127.0.0.1", 0)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def queries(engine):
    from lens_engine.suites import build_suites

    q, _ = build_suites(engine.corpus)
    # a few of each suite, deterministic
    return pl.concat([q.filter(pl.col("suite") == s).head(4) for s in ("nl", "identifier", "structural")])


@pytest.fixture
def faults(monkeypatch):
    for k in ("LENS_ENGINE_FAULT", "LENS_ENGINE_DELAY_MS", "LENS_ENGINE_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _client(server, **kw) -> LensClient:
    kw.setdefault("backoff_ms", 2)
    kw.setdefault("sla_ms", 150)
    kw.setdefault("retries", 2)
    return LensClient(server.url, **kw)


BASE = all_systems()[0]


# ---------------------------------------------------------------------------------------------
# The client against the real engine
# ---------------------------------------------------------------------------------------------
def test_hits_arrive_from_the_real_engine(server, queries, faults, engine):
    sidecar: list = []
    recs = collect_run(
        _client(server), queries, BASE.name, "r1", cfg_hash=BASE.cfg_hash, progress=False, sidecar=sidecar
    )
    assert [r["qid"] for r in recs] == queries["qid"].to_list()
    assert all(tuple(r) == RECORD_KEYS for r in recs)
    assert all(r["error"] is None and r["hits"] for r in recs), [
        (r["qid"], r["error"], r["lat_ms"]) for r in recs if r["error"] or not r["hits"]
    ]
    assert all(r["cfg_hash"] == BASE.cfg_hash for r in recs)
    assert all(len({s["shard"] for s in r["shards"]}) == engine.index.n_shards for r in recs)
    paths = {u.path for u in engine.corpus.units}
    repos = {u.path: u.repo for u in engine.corpus.units}
    assert all(h["path"] in paths and h["repo"] == repos[h["path"]] for r in recs for h in r["hits"])
    # exact-identifier queries find their (unique) function at rank 1 on the real index
    from lens_engine.suites import build_suites

    _, gt = build_suites(engine.corpus)
    want = {q: (p, s) for q, p, s in gt.select("qid", "path", "start_line").iter_rows()}
    ident = [r for r in recs if r["suite"] == "identifier"]
    top1 = [(r["hits"][0]["path"], r["hits"][0]["start_line"]) == want[r["qid"]] for r in ident]
    assert len(ident) == 4 and sum(top1) >= 3
    assert all(s["late"] is False for s in sidecar)


def test_query_past_the_deadline_is_late_not_dropped(server, queries, faults):
    faults.setenv("LENS_ENGINE_DELAY_MS", "120")
    sidecar: list = []
    q = queries.head(2)
    recs = collect_run(_client(server, sla_ms=50), q, BASE.name, "r1", progress=False, sidecar=sidecar)
    assert len(recs) == 2
    assert all(r["error"] is None and r["hits"] for r in recs), [
        (r["qid"], r["error"], r["lat_ms"]) for r in recs if r["error"] or not r["hits"]
    ]
    assert all(s["late"] and s["client_ms"] >= 120 and s["attempts"] == 1 for s in sidecar)


def test_injected_5xx_is_retried_then_recorded_as_error(server, queries, faults):
    faults.setenv("LENS_ENGINE_FAULT", "500")
    c = _client(server, retries=2)
    sidecar: list = []
    recs = collect_run(c, queries.head(2), BASE.name, "r1", cfg_hash=BASE.cfg_hash, progress=False, sidecar=sidecar)
    assert len(recs) == 2 and all(r["error"].startswith("http_5xx:500:injected_fault") for r in recs)
    # a failed query has no engine-reported configuration: unknown (issue 17), not the project's
    assert all(r["hits"] == [] and r["lat_ms"] > 0 and r["cfg_hash"] == "unknown" for r in recs)
    assert all(s["attempts"] == 3 for s in sidecar) and c.stats["retries"] == 4


def test_connection_reset_is_retried_then_recorded_as_error(server, queries, faults):
    faults.setenv("LENS_ENGINE_FAULT", "reset")
    c = _client(server, retries=1)
    res = c.search("q1", queries["text"][0], BASE.name)
    assert res.attempts == 2 and res.error is not None and res.hits == []
    assert res.error in ("conn_reset", "truncated_stream") or res.error.startswith("conn_")


def test_truncated_stream_is_an_error_not_a_short_result(server, queries, faults):
    faults.setenv("LENS_ENGINE_FAULT", "truncate")
    c = _client(server, retries=1)
    res = c.search("q1", queries["text"][0], BASE.name)
    assert res.error == "truncated_stream" and res.hits == [] and res.attempts == 2


def test_4xx_is_not_retried(server, queries, faults):
    c = _client(server, retries=3)
    res = c.search("q1", queries["text"][0], "no_such_system")
    assert res.error.startswith("http_4xx:400:unknown_system") and res.attempts == 1
    faults.setenv("LENS_ENGINE_TOKEN", TOKEN)
    res = _client(server, retries=3, token="wrong").search("q1", queries["text"][0], BASE.name)
    assert res.error.startswith("http_4xx:401") and res.attempts == 1
    res = _client(server, retries=3, token=TOKEN).search("q1", queries["text"][0], BASE.name)
    assert res.error is None and res.hits


def test_unreachable_endpoint_fails_with_one_clear_message(monkeypatch, data_dir, queries, caplog):
    url = _closed_port_url()
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("LENS_ENDPOINTS", url)
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    src = LensDataSource()
    with pytest.raises(LensUnreachable) as ei:
        src.collect(BASE, queries.head(3), "r1", 0.0, 10)
    msg = str(ei.value)
    assert msg.startswith(f"cannot reach {url}") and "conn_refused" in msg and TOKEN not in msg
    assert "\n" not in msg and TOKEN not in caplog.text


# ---------------------------------------------------------------------------------------------
# Parity: the simulator and the HTTP ingestor write rows the same way
# ---------------------------------------------------------------------------------------------
def test_sim_and_http_ingestion_give_the_same_rows_per_qid(server, queries, faults, tmp_path):
    report = ingestion_parity(queries, BASE, _client(server), tmp_path)
    assert report.height == queries.height and set(report["qid"]) == set(queries["qid"])
    assert report["match"].all() and (report["http_rows"] == 1).all()


def test_parity_holds_when_every_http_query_fails_and_catches_a_dropped_query(server, queries, faults, tmp_path):
    faults.setenv("LENS_ENGINE_FAULT", "500")
    report = ingestion_parity(queries.head(3), BASE, _client(server, retries=0), tmp_path / "a")
    assert report["match"].all()  # failed queries are rows, not gaps
    faults.delenv("LENS_ENGINE_FAULT")

    from resources import data_source as ds  # a broken ingestor that loses a query is caught

    real = ds.collect_run
    try:
        ds.collect_run = lambda *a, **kw: real(*a, **kw)[1:]
        report = ingestion_parity(queries.head(3), BASE, _client(server), tmp_path / "b")
    finally:
        ds.collect_run = real
    assert not report["match"].all()
    assert report.filter(~pl.col("match"))["http_rows"].to_list() == [0]


# ---------------------------------------------------------------------------------------------
# The engine server subprocess
# ---------------------------------------------------------------------------------------------
def test_engine_that_dies_during_startup_fails_with_its_stderr_tail(cache, tmp_path):
    srv = EngineServer(cache, log_dir=tmp_path, env={"LENS_CORPUS_MAX_FUNCTIONS": "lots"})
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as ei:
        srv.start()
    msg = str(ei.value)
    assert "exited before it was listening" in msg and "LENS_CORPUS_MAX_FUNCTIONS='lots'" in msg
    assert "exit code 2" in msg and str(srv.log_path) in msg
    assert time.monotonic() - t0 < 60 and not srv.running() and srv.pid is None


def test_engine_startup_timeout_kills_the_child(cache, tmp_path, small_env):
    srv = EngineServer(cache, max_functions=SMALL, log_dir=tmp_path, startup_timeout_s=0.3)
    with pytest.raises(EngineStartError) as ei:
        srv.start()
    assert "no LISTENING line within" in str(ei.value)
    assert srv.pid is None and not srv.running()


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().split(")")[-1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_engine_serves_from_several_worker_processes_and_stops_them_all(cache, tmp_path, small_env, queries):
    srv = EngineServer(cache, max_functions=SMALL, log_dir=tmp_path, env={"LENS_ENGINE_WORKERS": "2"})
    with srv:
        assert srv.health["workers"] == 2 and srv.health["languages"]
        workers = [p for p in _children(srv.pid) if _alive(p)]
        assert len(workers) == 1  # the parent serves too
        client = LensClient(srv.endpoint, sla_ms=150, concurrency=4)
        recs = collect_run(client, pl.concat([queries] * 4), BASE.name, run_id="r", progress=False)
        assert len(recs) == 4 * queries.height and all(r["error"] is None for r in recs)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers + [srv.pid or -1])


def test_manifest_file_hashes_to_the_corpus_digest(engine, tmp_path):
    from lens_core.common.hashing import sha256_file

    p = write_manifest(engine.corpus, tmp_path)
    assert sha256_file(p) == engine.corpus.digest
    doc = json.loads(manifest_text(engine.corpus))
    assert len(doc["files"]) == engine.corpus.files and all(len(r[2]) == 64 for r in doc["files"])


# ---------------------------------------------------------------------------------------------
# The resource: local suites, collection, teardown on failure, no token anywhere
# ---------------------------------------------------------------------------------------------
def test_suite_caps_parse_and_apply(engine):
    assert parse_suite_caps("250") == {"*": 250}
    assert parse_suite_caps("nl=0,*=30") == {"nl": None, "*": 30}
    assert parse_suite_caps("0") == {"*": None}
    with pytest.raises(ValueError, match="LENS_MAX_PER_SUITE"):
        parse_suite_caps("nl=lots")
    from lens_engine.suites import build_suites

    q, g = build_suites(engine.corpus)
    cq, cg = cap_suites(q, g, parse_suite_caps("nl=0,identifier=5,*=7"))
    sizes = dict(cq.group_by("suite").len().iter_rows())
    assert sizes["nl"] == q.filter(pl.col("suite") == "nl").height
    assert sizes["identifier"] == 5 and sizes["structural"] == 7
    assert set(cg["qid"]) == set(cq["qid"]) and cg.height >= cq.height
    again, _ = cap_suites(q.reverse(), g, parse_suite_caps("nl=0,identifier=5,*=7"))
    assert again.equals(cq)  # independent of row order


def test_local_suites_come_from_the_engine(monkeypatch, small_env, engine):
    monkeypatch.setenv("DATA_SOURCE", "local")
    monkeypatch.setenv("LENS_MAX_PER_SUITE", "nl=0,*=6")
    q, g = LensDataSource().suites()
    from lens_core.common.contracts import QUERIES_SCHEMA

    assert q.columns == [f.name for f in QUERIES_SCHEMA]
    assert dict(q.group_by("suite").len().iter_rows())["identifier"] == 6
    paths = {(u.path, u.start_line) for u in engine.corpus.units}
    assert set(zip(g["path"], g["start_line"])) <= paths and set(g["qid"]) == set(q["qid"])
    q2, _ = LensDataSource().suites()
    assert q2.equals(q)


def test_prod_suites_file_is_required_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.delenv("LENS_SUITES", raising=False)
    with pytest.raises(ValueError, match="LENS_SUITES"):
        LensDataSource().suites()
    monkeypatch.setenv("LENS_SUITES", str(tmp_path / "nope.parquet"))
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        LensDataSource().suites()
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"qid": ["a"], "text": ["x"]}).write_parquet(bad)
    monkeypatch.setenv("LENS_SUITES", str(bad))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['suite', 'intent', 'language'\]"):
        LensDataSource().suites()
    good = tmp_path / "q.parquet"
    pl.DataFrame(
        {
            "qid": ["a", "b"],
            "text": ["x", "y"],
            "suite": ["nl"] * 2,
            "intent": ["nl"] * 2,
            "language": ["python"] * 2,
            "extra": [1, 2],
        }
    ).write_parquet(good)
    monkeypatch.setenv("LENS_SUITES", str(good))
    q, g = LensDataSource().suites()
    assert q.height == 2 and g.height == 0 and "extra" not in q.columns
    gt = tmp_path / "gt.parquet"
    pl.DataFrame(
        {
            "qid": ["a", "zz"],
            "repo": ["r"] * 2,
            "path": ["p"] * 2,
            "start_line": [1, 2],
            "end_line": [3, 4],
            "rel": [3, 3],
        }
    ).write_parquet(gt)
    monkeypatch.setenv("LENS_GROUND_TRUTH", str(gt))
    _, g = LensDataSource().suites()
    assert g["qid"].to_list() == ["a"]
    assert (
        read_query_file(good, __import__("lens_core.common.contracts", fromlist=["x"]).QUERIES_SCHEMA, "q", "X").height
        == 2
    )


def test_prod_describe_lists_endpoints_without_credentials(monkeypatch):
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("LENS_ENDPOINTS", f"https://user:{TOKEN}@lens-a.example:8443/api?key={TOKEN}, http://lens-b:80")
    d = LensDataSource().describe()
    assert d["endpoints"] == ["https://lens-a.example:8443/api", "http://lens-b:80"]
    assert TOKEN not in json.dumps(d)


def test_local_run_in_dagster_stops_the_engine_on_step_failure_and_never_leaks_the_token(
    monkeypatch, data_dir, small_env, queries, caplog
):
    """One Dagster run: a step collects through the resource (starting the engine as a
    subprocess with a bearer token), the next step fails. Afterwards the engine is gone, and
    the token is in no file under the data dir, no log record, no event metadata."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DATA_SOURCE", "local")
    monkeypatch.setenv("LENS_ENGINE_TOKEN", TOKEN)
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    seen: dict = {}
    q = queries.head(5)

    @dg.asset
    def collect_tiny(context, lens_source: LensDataSource) -> dg.MaterializeResult:
        lens_source.client()  # starts the engine
        srv = lens_source.engine_server
        seen["pid"], seen["log"] = srv.pid, srv.log_path
        assert _alive(srv.pid)
        recs = lens_source.collect(BASE, q, "rtok", 0.0, 10)
        seen["errors"] = [r["error"] for r in recs]
        info = write_raw_run(data_dir / "runs" / "test" / "rtok" / f"{BASE.name}.ndjson", recs)
        return dg.MaterializeResult(
            metadata={
                "source": dg.MetadataValue.json(lens_source.describe()),
                "sha256": info["sha256"],
                "client": repr(lens_source.client()),
            }
        )

    @dg.asset(deps=[collect_tiny])
    def boom() -> None:
        raise RuntimeError("a step failed after collection")

    res = dg.materialize([collect_tiny, boom], resources={"lens_source": LensDataSource()}, raise_on_error=False)
    assert not res.success
    assert seen["errors"] == [None] * 5  # the token was sent and accepted
    pid = seen["pid"]
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the engine outlived the run"
    assert Path(seen["log"]).is_relative_to(data_dir)
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ndjson" for p in files) and any(p.suffix == ".log" for p in files)
    for p in files:
        assert TOKEN.encode() not in p.read_bytes(), p
    assert TOKEN not in caplog.text
    md = res.asset_materializations_for_node("collect_tiny")[0].metadata
    text = json.dumps({k: str(v.value) for k, v in md.items()})
    assert TOKEN not in text and '"corpus_digest"' in str(md["source"].value).replace("'", '"')
    for ev in res.all_events:
        assert TOKEN not in str(ev)


def test_resource_context_manager_stops_the_engine(monkeypatch, data_dir, small_env, queries):
    monkeypatch.setenv("DATA_SOURCE", "local")
    with LensDataSource(max_per_suite="3") as src:
        d = src.describe()
        assert d["source"] == "local" and 0 < d["functions"] <= SMALL
        assert len(d["corpus_digest"]) == 64 and d["manifest_sha256"] == d["corpus_digest"]
        assert src.engine_server is None  # suites and describe never start the engine
        recs = src.collect(BASE, queries.head(2), "r", 0.0, 10)
        pid = src.engine_server.pid
        assert len(recs) == 2 and _alive(pid)
        os.kill(pid, signal.SIGKILL)  # the engine dies mid-run: one clear error with its log
        src.engine_server._proc.wait(timeout=30)
        with pytest.raises(LensUnreachable, match="reference engine .* is no longer running") as ei:
            src.collect(BASE, queries.head(2), "r", 0.0, 10)
        assert "engine ready" in str(ei.value)  # the engine log's tail
    assert src.engine_server is None


# ---------------------------------------------------------------------------------------------
# The engine assets
# ---------------------------------------------------------------------------------------------
def test_engine_assets_skip_without_local(monkeypatch, data_dir):
    from lens_assets.engine_assets import engine_assets

    monkeypatch.setenv("DATA_SOURCE", "sim")
    res = dg.materialize(engine_assets, resources={"lens_source": LensDataSource()})
    assert res.success
    for ev in res.get_asset_materialization_events():
        assert ev.materialization.metadata["skipped"].value == "DATA_SOURCE=sim"


def test_engine_assets_on_local_hit_the_cache(monkeypatch, data_dir, small_env, engine):
    from lens_assets.engine_assets import engine_assets, engine_corpus, engine_index

    monkeypatch.setenv("DATA_SOURCE", "local")
    res = dg.materialize(engine_assets, resources={"lens_source": LensDataSource()})
    assert res.success
    corpus_md = res.asset_materializations_for_node("engine_corpus")[0].metadata
    index_md = res.asset_materializations_for_node("engine_index")[0].metadata
    assert corpus_md["digest"].value == engine.corpus.digest and corpus_md["functions"].value == len(
        engine.corpus.units
    )
    assert corpus_md["files"].value == engine.corpus.files
    assert sum(v["functions"] for v in corpus_md["languages"].value.values()) == len(engine.corpus.units)
    assert index_md["cache_hit"].value is True and index_md["build"].value == "cache hit"
    assert index_md["index_key"].value == engine.index.key and index_md["index_bytes"].value > 0
    for a in (engine_corpus, engine_index):
        spec = a.specs_by_key[a.key]
        assert spec.group_name == "engine" and spec.owners == ["team:search-core"]


# ---------------------------------------------------------------------------------------------
# Interleaved collection of a week (issue 17)
# ---------------------------------------------------------------------------------------------
def _ndjson(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"type": "done", "records": len(lines) - 1}
    return [json.loads(x) for x in lines[:-1]]


def test_collect_week_interleaves_the_twins_against_the_real_engine(monkeypatch, data_dir, server, queries, faults):
    base, twin = all_systems()[0], next(s for s in all_systems() if s.pack == "aa")
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("LENS_ENDPOINTS", server.url)
    monkeypatch.delenv("AUTH_TOKEN", raising=False)
    paths = {s.name: data_dir / "w" / f"{s.name}.ndjson" for s in (base, twin)}
    with LensDataSource(concurrency=2) as src:
        got = src.collect_week([base, twin], queries, "2026-W10", 0.0, 10, paths)
        seq = {s.name: src.collect(s, queries, "2026-W10", 0.0, 10) for s in (base, twin)}
        again = src.collect_week([base, twin], queries, "2026-W10", 0.0, 10, paths)
    assert got["order"] == "interleaved" and got["block"] == 1 and got["concurrency"] == 2
    assert got["seed"] == again["seed"]  # derived from run.seed and the run id: recorded, stable
    recs = {name: _ndjson(p) for name, p in paths.items()}
    qids = queries["qid"].to_list()
    for name in paths:
        assert [r["qid"] for r in recs[name]] == qids and got["systems"][name]["errors"] == 0
        # the same answers as one system after another, but for the engine's time-dependent
        # stops (spend cap, deadline): nearly every query's top hit agrees (a mix-up of queries
        # or systems would agree on few)
        same = sum(a["hits"][:1] == b["hits"][:1] for a, b in zip(recs[name], seq[name]))
        assert same >= 0.8 * len(qids), (name, same, len(qids))
        assert all(r["cfg_hash"] == base.cfg_hash for r in recs[name])  # what the engine reported
    # the twins answered each query close in time: query i of one before query i+2 of the other
    ts = {name: [r["req_ts"] for r in rs] for name, rs in recs.items()}
    for i in range(len(qids) - 2):
        assert max(ts[base.name][i], ts[twin.name][i]) <= min(ts[base.name][i + 2], ts[twin.name][i + 2])


def test_collect_week_on_sim_is_the_sequential_path_byte_for_byte(monkeypatch, data_dir):
    monkeypatch.setenv("DATA_SOURCE", "sim")
    src = LensDataSource(queries_per_suite=8)
    q, _ = src.suites()
    systems = all_systems()[:2]
    paths = {s.name: data_dir / "w" / f"{s.name}.ndjson" for s in systems}
    got = src.collect_week(systems, q, "2026-W10", 1.7e12, 10, paths)
    assert got["order"] == "sequential" and got["seed"] is None
    for s in systems:
        want = data_dir / "ref" / f"{s.name}.ndjson"
        write_raw_run(want, src.collect(s, q, "2026-W10", 1.7e12, 10))
        assert paths[s.name].read_bytes() == want.read_bytes()
        assert got["systems"][s.name]["records"] == q.height


def test_system_clients_follow_the_declaration(monkeypatch):
    monkeypatch.setenv("DATA_SOURCE", "prod")
    monkeypatch.setenv("LENS_ENDPOINTS", "http://lens-a.example:8080")
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    src = LensDataSource()
    plain = src.system_client(SystemConfig(name="p"))
    assert plain is src.client()
    shaped = src.system_client(SystemConfig(name="s", repo="cpython", path_prefix="Lib/"))
    assert shaped is not plain and shaped.repo == "cpython" and shaped.endpoint == plain.endpoint
    assert src.system_client(SystemConfig(name="s2", repo="cpython", path_prefix="Lib/")) is shaped
    other = src.system_client(SystemConfig(name="o", endpoint="http://lens-b.example:9090"))
    assert other.endpoint == "http://lens-b.example:9090" and TOKEN not in repr(other)
