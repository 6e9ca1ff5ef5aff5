from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lens_engine.server import make_server, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(engine):
    srv = make_server(engine, "127.0.0.1", 0)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(url, headers=None, timeout=10):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def _search_url(srv, **params):
    params = {"q": "read the file", "k": 5, "system": "lens_v22", "deadline_ms": 1000, **params}
    return f"{srv.url}/search?{urllib.parse.urlencode(params)}"


def test_health(server, engine):
    code, ctype, body = _get(server.url + "/health")
    h = json.loads(body)
    assert code == 200 and h["status"] == "ok" and h["functions"] == len(engine.corpus.units)
    assert h["corpus_digest"] == engine.corpus.digest and "lens_v22" in h["systems"] and len(h["systems"]) > 20


def test_search_streams_ndjson(server):
    code, ctype, body = _get(_search_url(server))
    lines = [json.loads(x) for x in body.splitlines()]
    assert code == 200 and ctype == "application/x-ndjson"
    assert lines[-1]["type"] == "done" and [x["rank"] for x in lines[:-1]] == list(range(1, len(lines)))
    # every system name of the full grids is accepted
    code, _, body = _get(_search_url(server, system="router_pack_b__mcg0.03_tau0.58_cap4"))
    assert code == 200 and json.loads(body.splitlines()[-1])["type"] == "done"


@pytest.mark.parametrize(
    "params,code,error",
    [
        ({"system": "nope"}, 400, "unknown_system"),
        ({"k": "x"}, 400, "bad_request"),
        ({"q": ""}, 400, "bad_request"),
        ({"deadline_ms": "0"}, 400, "bad_request"),
        ({"fail": "500"}, 500, "injected_fault"),
    ],
)
def test_errors_are_json(server, params, code, error):
    with pytest.raises(urllib.error.HTTPError) as ei:
        _get(_search_url(server, **params))
    assert ei.value.code == code
    assert json.loads(ei.value.read())["error"] == error


def test_fault_truncate_and_reset_and_delay(server):
    _, _, body = _get(_search_url(server, fail="truncate"))
    lines = [json.loads(x) for x in body.splitlines()]
    assert lines and all(x["type"] == "hit" for x in lines)  # no done line
    with pytest.raises((ConnectionError, http.client.IncompleteRead, urllib.error.URLError, OSError)):
        c = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        c.request("GET", _search_url(server, fail="reset").split(str(server.server_address[1]), 1)[1])
        r = c.getresponse()
        body = r.read()
        if b'"done"' not in body:  # stream cut before the done line
            raise ConnectionError("stream cut")
    t0 = time.monotonic()
    _get(_search_url(server, delay_ms=300))
    assert time.monotonic() - t0 >= 0.3


def test_bearer_token(server, monkeypatch):
    monkeypatch.setenv("LENS_ENGINE_TOKEN", "s3cret-token")
    with pytest.raises(urllib.error.HTTPError) as ei:
        _get(_search_url(server))
    body = ei.value.read().decode()
    assert ei.value.code == 401 and "s3cret" not in body
    code, _, _ = _get(_search_url(server), headers={"Authorization": "Bearer s3cret-token"})
    assert code == 200


def test_cli_serve_subprocess(cache_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LENS_ENGINE_STRAGGLER_P": "0"}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lens_engine",
            "serve",
            "--port",
            "0",
            "--cache-dir",
            str(cache_dir),
            "--max-functions",
            "250",
            "--no-dense",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:"), line
        url = line.split(" ", 1)[1]
        assert json.loads(_get(url + "/health")[2])["status"] == "ok"
        body = _get(f"{url}/search?q=open+file&k=3&system=lens_v22&deadline_ms=500")[2]
        assert json.loads(body.splitlines()[-1])["type"] == "done"
        p.terminate()  # SIGTERM: graceful shutdown
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
