"""Loopback HTTP server for the reference engine, SPEC §2 wire format (stdlib only).

GET /health -> 200 {"status":"ok","corpus_digest":...,"functions":N,"systems":[...]}
GET /search?q=&k=&system=&deadline_ms=[&arms=lex,struct,sem][&debug=1] -> 200
    application/x-ndjson, one line per hit then a done line (`arms`: an ablation that fuses only
    those retrieval arms; see Engine.search). Errors: non-2xx JSON {"error":..., "detail":...};
    400 for bad parameters or an unknown system, 401 without the bearer token when
    LENS_ENGINE_TOKEN is set (the token is never logged or echoed).
Fault injection (off by default; query parameters, or env LENS_ENGINE_FAULT / LENS_ENGINE_DELAY_MS
for every request): fail=500 (a 500 error), fail=reset (the connection is closed after the
first line), fail=truncate (the stream ends without the done line), delay_ms=N (sleep first).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from lens_core.common.systems import SystemConfig, engine_systems
from lens_engine.engine import Engine

log = logging.getLogger(__name__)
FAULTS = ("500", "reset", "truncate")


class _Handler(BaseHTTPRequestHandler):
    server_version = "lens-engine/1"
    protocol_version = "HTTP/1.1"

    # quiet access log; never includes headers (no token leaks)
    def log_message(self, fmt, *args):  # noqa: N802
        log.debug("%s %s", self.address_string(), fmt % args)

    def _json(self, code: int, obj: dict) -> None:
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, error: str, detail) -> None:
        self._json(code, {"error": error, "detail": detail})

    def _authorised(self) -> bool:
        token = os.environ.get("LENS_ENGINE_TOKEN")
        if not token:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    def do_GET(self):  # noqa: N802
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if url.path == "/health":
                eng: Engine = self.server.engine
                return self._json(
                    200,
                    {
                        "status": "ok",
                        "corpus_digest": eng.corpus.digest,
                        "functions": len(eng.corpus.units),
                        "languages": sorted({u.language for u in eng.corpus.units}),
                        "workers": self.server.workers,
                        "systems": sorted(self.server.systems),
                    },
                )
            if url.path != "/search":
                return self._error(404, "not_found", url.path)
            if not self._authorised():
                return self._error(401, "unauthorized", "missing or wrong bearer token")
            self._search(params)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # pragma: no cover - last resort
            log.exception("request failed")
            try:
                self._error(500, "internal", type(e).__name__)
            except Exception:
                pass

    def _search(self, params: dict) -> None:
        fault = params.get("fail") or os.environ.get("LENS_ENGINE_FAULT") or ""
        delay = params.get("delay_ms") or os.environ.get("LENS_ENGINE_DELAY_MS") or "0"
        q = params.get("q", "")
        if not q.strip():
            return self._error(400, "bad_request", "q: required, non-empty")
        try:
            k = int(params.get("k", "10"))
            deadline_ms = float(params.get("deadline_ms", "150"))
            delay_ms = float(delay)
        except ValueError as e:
            return self._error(400, "bad_request", f"k, deadline_ms and delay_ms must be numbers ({e})")
        if not 1 <= k <= 1000:
            return self._error(400, "bad_request", f"k={k}: expected 1..1000")
        if deadline_ms <= 0:
            return self._error(400, "bad_request", f"deadline_ms={deadline_ms}: must be > 0")
        if fault and fault not in FAULTS:
            return self._error(400, "bad_request", f"fail={fault!r}: expected one of {', '.join(FAULTS)}")
        name = params.get("system", "")
        system: SystemConfig | None = self.server.systems.get(name)
        if system is None:
            return self._error(400, "unknown_system", name)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        if fault == "500":
            return self._error(500, "injected_fault", "fail=500")
        arms = None
        if params.get("arms"):
            arms = frozenset(a.strip() for a in params["arms"].split(",") if a.strip())
            if not arms or not arms <= {"lex", "struct", "sem"}:
                return self._error(
                    400,
                    "bad_request",
                    f"arms={params['arms']!r}: expected a comma-separated subset of lex, struct, sem",
                )
        lines = self.server.engine.search(
            q, k, system, deadline_ms, qid=params.get("qid") or None, debug=params.get("debug") == "1", arms=arms
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if not fault:
            # the engine yields every hit once fusion is done: one write for the whole answer
            # (a write per line costs a syscall per hit), still NDJSON, one line per hit
            self.wfile.write("".join(json.dumps(line) + "\n" for line in lines).encode())
            self.wfile.flush()
            return
        for line in lines:
            if fault == "truncate" and line["type"] == "done":
                break
            self.wfile.write((json.dumps(line) + "\n").encode())
            self.wfile.flush()
            if fault == "reset":
                # abort: RST instead of an orderly close
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
                return


class LensServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, engine: Engine, systems: dict[str, SystemConfig], workers: int = 1):
        super().__init__(addr, _Handler)
        self.engine = engine
        self.systems = systems
        self.workers = int(workers)
        if self.workers > 1:
            # several processes accept on this socket: the ones that lose a race must get
            # EAGAIN (ignored by serve_forever) instead of blocking in accept()
            self.socket.setblocking(False)

    def get_request(self):
        conn, addr = self.socket.accept()
        conn.setblocking(True)
        return conn, addr

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(
    engine: Engine, host: str = "127.0.0.1", port: int = 0, systems: list[SystemConfig] | None = None, workers: int = 1
) -> LensServer:
    if systems is None:
        systems = engine_systems()
    return LensServer((host, port), engine, {s.name: s for s in systems}, workers=workers)


def serve_in_thread(server: LensServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    return t
