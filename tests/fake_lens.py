"""A small threaded fake Lens server for the client's tests (SPEC §2 wire format).

Binds 127.0.0.1 port 0 and streams NDJSON with HTTP/1.1 chunked encoding. Faults are planned
per query text and consumed one per request (then `default` applies):

    ok                  normal answer
    slow:<ms>           wait <ms> before the status line (slow first byte)
    drip:<ms>           wait <ms> before every line (slow stream; done.lat_ms is honest)
    http:<status>       error status with a JSON body {"error": ..., "detail": ...}; the error
                        text echoes the request's Authorization header (to test redaction)
    reset               two hit lines, then a TCP reset (SO_LINGER 0)
    truncate            all hit lines, then a clean end of stream without `done`
    badjson             a non-JSON line after the first hit
    nofield:<name>      the first hit line lacks field <name>
    oss                 the open-source Lens JSON response (application/json)

`service_ms` and `capacity` model a server with a fixed service time and `capacity` requests
in service at once (the load test's saturation point is capacity / service time).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class FakeLens:
    def __init__(
        self,
        token: str | None = None,
        hits: int = 5,
        default: str = "ok",
        cfg_hash: str = "feedc0de12345678",
        service_ms: float = 0.0,
        capacity: int | None = None,
    ):
        self.token = token
        self.hits = hits
        self.default = default
        self.cfg_hash = cfg_hash
        self.service_ms = service_ms
        self._capacity = threading.Semaphore(capacity) if capacity else None
        self._plans: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        self.requests: list[dict] = []  # every request: path, q, system, k, deadline_ms, auth, behaviour
        self.disconnects: list[str] = []  # q of each stream whose client went away mid-response
        self.inflight = 0  # /search requests being served now
        self.max_inflight = 0  # ... and the most at once
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------
    def plan(self, q: str, *behaviours: str) -> "FakeLens":
        with self._lock:
            self._plans.setdefault(q, deque()).extend(behaviours)
        return self

    def count(self, q: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["path"] == "/search" and (q is None or r["q"] == q))

    def wait_disconnects(self, n: int, timeout_s: float = 2.0) -> int:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if len(self.disconnects) >= n:
                    break
            time.sleep(0.01)
        with self._lock:
            return len(self.disconnects)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeLens":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                fake._handle(self)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-lens"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeLens":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------------
    def _next(self, q: str) -> str:
        with self._lock:
            plan = self._plans.get(q)
            return plan.popleft() if plan else self.default

    def _hit_lines(self, q: str, k: int) -> list[dict]:
        base = sum(q.encode()) % 97
        out = []
        for i in range(min(self.hits, k)):
            out.append(
                {
                    "type": "hit",
                    "rank": i + 1,
                    "repo": "cpython",
                    "path": f"Lib/mod_{(base + i) % 13}.py",
                    "start_line": 10 * i + 1,
                    "end_line": 10 * i + 5,
                    "score": round(20.0 - i * 1.5, 3),
                    "why": ["lex", "sem"] if i % 2 else ["lex"],
                    "shard": i % 3,
                }
            )
        return out

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        t0 = time.time()
        parts = urlsplit(h.path)
        qs = {k: v[0] for k, v in parse_qs(parts.query).items()}
        auth = h.headers.get("Authorization")
        q = qs.get("q", "")
        behaviour = self._next(q) if parts.path == "/search" else "health"
        with self._lock:
            self.requests.append(
                {
                    "path": parts.path,
                    "q": q,
                    "system": qs.get("system"),
                    "k": qs.get("k"),
                    "deadline_ms": qs.get("deadline_ms"),
                    "auth": auth,
                    "behaviour": behaviour,
                }
            )
        if self.token is not None and auth != f"Bearer {self.token}":
            return self._json(h, 401, {"error": "unauthorized", "detail": "missing or wrong bearer token"})
        if parts.path == "/health":
            return self._json(h, 200, {"status": "ok", "engine": "fake"})
        if parts.path != "/search":
            return self._json(h, 404, {"error": "not_found", "detail": parts.path})
        try:
            k = int(qs.get("k", "50"))
        except ValueError:
            return self._json(h, 400, {"error": "bad k", "detail": qs.get("k")})
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        if self._capacity is not None:
            self._capacity.acquire()
        try:
            if self.service_ms:
                time.sleep(self.service_ms / 1000.0)
            self._respond(h, behaviour, q, k, qs.get("system", ""), t0)
        finally:
            if self._capacity is not None:
                self._capacity.release()
            with self._lock:
                self.inflight -= 1

    def _json(self, h, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True

    def _respond(self, h, behaviour: str, q: str, k: int, system: str, t0: float) -> None:
        kind, _, arg = behaviour.partition(":")
        if kind == "slow":
            time.sleep(float(arg) / 1000.0)
        if kind == "http":
            status = int(arg)
            return self._json(
                h,
                status,
                {"error": f"injected {status} (request auth: {h.headers.get('Authorization')})", "detail": {"q": q}},
            )
        hits = self._hit_lines(q, k)
        if kind == "oss":
            return self._json(
                h,
                200,
                {
                    "results": [
                        {"file_path": x["path"], "line_number": x["start_line"], "score": x["score"]} for x in hits
                    ]
                },
            )
        lines: list[bytes] = []
        for i, x in enumerate(hits):
            if kind == "nofield" and i == 0:
                x = {key: v for key, v in x.items() if key != arg}
            lines.append(json.dumps(x).encode() + b"\n")
            if kind == "badjson" and i == 0:
                lines.append(b"{not json\n")
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        delay = float(arg) / 1000.0 if kind == "drip" else 0.0
        try:
            for i, line in enumerate(lines):
                if delay:
                    time.sleep(delay)
                self._chunk(h, line)
                if kind == "reset" and i == 1:
                    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    h.connection.close()
                    return
            if kind == "truncate":
                h.wfile.write(b"0\r\n\r\n")
                return
            if delay:
                time.sleep(delay)
            now = time.time()
            done = {
                "type": "done",
                "lat_ms": round((now - t0) * 1000.0, 3),
                "cfg_hash": self.cfg_hash,
                "shards": [
                    {
                        "shard": s,
                        "probe_id": f"p-{s}",
                        "issued_ts": t0 * 1000.0,
                        "first_byte_ts": t0 * 1000.0 + 0.5,
                        "done_ts": now * 1000.0,
                        "cancel_ts": None,
                        "status": "ok",
                    }
                    for s in range(3)
                ],
                "cost": {"probes": 3, "cpu_ms": 1.25},
                "system": system,
            }
            self._chunk(h, json.dumps(done).encode() + b"\n")
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            with self._lock:
                self.disconnects.append(q)

    @staticmethod
    def _chunk(h, data: bytes) -> None:
        h.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        h.wfile.flush()
