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

Fault modes of the endpoint-fault suite (tests/test_endpoint_faults.py, issue 18):

    dripbody:<ms>       the OSS JSON answer (Content-Length) one byte every <ms>
    driperr:<st>:<ms>   error status <st> whose JSON body comes one byte every <ms>
    dripbytes:<ms>      the NDJSON stream one byte every <ms>, chunk framing included
    driphead:<ms>       the status line and headers one byte every <ms>, then the answer
    bad:<case>          the NDJSON answer with one invalid value (`BAD_CASES`: NaN score,
                        infinite timestamps, rank 2^40, duplicate ranks, non-UTF-8, ...)
    ossbad:<case>       the OSS JSON answer with one invalid value (`OSS_BAD_CASES`)

A dripping answer stops at the first failed write (the client hung up) and after `DRIP_MAX_S`
whatever happens, so no server thread outlives a test by long. `token` + `auth_status` (401 or
403) refuse every request without the right bearer token (the refusal echoes the header it got,
to test redaction); `open_health=True` leaves `/health` open so only `/search` is refused;
`no_health=True` answers 404 on `/health` (no route, as the open-source Lens server).

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

DRIP_MAX_S = 20.0
RAW = "__raw_literal__"  # a value replaced by raw bytes after serialisation (`_RAW_LITERALS`)


def _set(i: int, field: str, value):
    def mutate(hits: list[dict], done: dict) -> None:
        hits[i][field] = value

    return mutate


def _set_shard(field: str, value):
    def mutate(hits: list[dict], done: dict) -> None:
        done["shards"][0][field] = value

    return mutate


def _set_done(path: tuple[str, ...], value):
    def mutate(hits: list[dict], done: dict) -> None:
        node = done
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _dup_rank(hits: list[dict], done: dict) -> None:
    hits[2]["rank"] = hits[1]["rank"]


# case -> (mutation of the parsed answer, raw bytes that replace RAW in the serialised answer)
BAD_CASES: dict[str, tuple] = {
    "nan_score": (_set(1, "score", float("nan")), None),
    "inf_score": (_set(1, "score", float("inf")), None),
    "ninf_score": (_set(1, "score", float("-inf")), None),
    "overflow_score": (_set(1, "score", RAW), b"1e999"),
    "rank_2p40": (_set(1, "rank", 2**40), None),
    "rank_zero": (_set(1, "rank", 0), None),
    "rank_negative": (_set(1, "rank", -1), None),
    "rank_float": (_set(1, "rank", 2.0), None),
    "rank_bool": (_set(1, "rank", True), None),
    "rank_duplicate": (_dup_rank, None),
    "start_after_end": (_set(1, "start_line", 50), None),
    "line_zero": (_set(1, "start_line", 0), None),
    "line_2p40": (_set(1, "end_line", 2**40), None),
    "line_huge_int": (_set(1, "end_line", RAW), b"1" + b"0" * 400),
    "empty_repo": (_set(1, "repo", ""), None),
    "blank_path": (_set(1, "path", "   "), None),
    "null_path": (_set(1, "path", None), None),
    "lone_surrogate_path": (_set(1, "path", "Lib/\ud800.py"), None),
    "nul_in_path": (_set(1, "path", "Lib/a\u0000b.py"), None),
    "non_utf8_path": (_set(1, "path", RAW), b'"Lib/\xff\xfe.py"'),
    "shard_2p40": (_set(1, "shard", 2**40), None),
    "shard_negative": (_set(1, "shard", -3), None),
    "why_unknown": (_set(1, "why", ["magic"]), None),
    "why_empty": (_set(1, "why", []), None),
    "nan_latency": (_set_done(("lat_ms",), float("nan")), None),
    "inf_latency": (_set_done(("lat_ms",), float("inf")), None),
    "negative_latency": (_set_done(("lat_ms",), -5.0), None),
    "inf_issued_ts": (_set_shard("issued_ts", float("inf")), None),
    "ninf_done_ts": (_set_shard("done_ts", float("-inf")), None),
    "nan_first_byte_ts": (_set_shard("first_byte_ts", float("nan")), None),
    "negative_ts": (_set_shard("issued_ts", -1.0), None),
    "empty_probe_id": (_set_shard("probe_id", ""), None),
    "bad_shard_status": (_set_shard("status", "exploded"), None),
    "probes_2p40": (_set_done(("cost", "probes"), 2**40), None),
    "nan_cpu": (_set_done(("cost", "cpu_ms"), float("nan")), None),
    "negative_cpu": (_set_done(("cost", "cpu_ms"), -1.0), None),
    "deep_nesting": ("deep", b"[" * 50_000 + b"]" * 50_000),
    "non_utf8_line": ("line", b"\xff\xfe{not even json}"),
}
OSS_BAD_CASES: dict[str, tuple[str, object]] = {
    "nan_score": ("score", float("nan")),
    "inf_score": ("score", float("inf")),
    "line_zero": ("line_number", 0),
    "line_2p40": ("line_number", 2**40),
    "empty_path": ("file_path", ""),
    "lone_surrogate_path": ("file_path", "\ud800"),
}


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
        auth_status: int = 401,
        open_health: bool = False,
        no_health: bool = False,
    ):
        self.token = token
        self.auth_status = auth_status
        self.open_health = open_health
        self.no_health = no_health
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
        if self.no_health and parts.path == "/health":  # like the open-source Lens server
            return self._json(h, 404, {"error": "not_found", "detail": parts.path})
        if (
            self.token is not None
            and auth != f"Bearer {self.token}"
            and not (self.open_health and parts.path == "/health")
        ):
            return self._json(
                h,
                self.auth_status,
                {"error": f"unauthorized (got {auth})", "detail": "missing or wrong bearer token"},
            )
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

    def _done(self, t0: float, system: str) -> dict:
        now = time.time()
        return {
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

    def _drip(self, h, q: str, data: bytes, delay: float) -> None:
        """Write `data` one byte every `delay` s; stop when the client hangs up."""
        end = time.monotonic() + DRIP_MAX_S
        try:
            for i in range(len(data)):
                if time.monotonic() > end:
                    return
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
                time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            with self._lock:
                self.disconnects.append(q)

    @staticmethod
    def _head(status: int, ctype: str, length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status} X", f"Content-Type: {ctype}", "Connection: close"]
        lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _ndjson_bytes(self, hits: list[dict], done: dict, raw: bytes | None, chunked: bool) -> bytes:
        out = b""
        for obj in [*hits, done]:
            line = json.dumps(obj).encode() + b"\n"
            if raw is not None:
                line = line.replace(json.dumps(RAW).encode(), raw)
            out += (b"%x\r\n" % len(line) + line + b"\r\n") if chunked else line
        return out + (b"0\r\n\r\n" if chunked else b"")

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
        oss = {"results": [{"file_path": x["path"], "line_number": x["start_line"], "score": x["score"]} for x in hits]}
        h.close_connection = True
        if kind == "dripbody":  # the OSS JSON shape, dripping
            body = json.dumps(oss).encode()
            return self._drip(h, q, self._head(200, "application/json", len(body)) + body, float(arg) / 1000.0)
        if kind == "driperr":  # an error body, dripping
            status, _, ms = arg.partition(":")
            body = json.dumps({"error": "overloaded", "detail": "x" * 400}).encode()
            return self._drip(h, q, self._head(int(status), "application/json", len(body)) + body, float(ms) / 1000.0)
        if kind in ("dripbytes", "driphead"):  # the NDJSON stream, or only its head, dripping
            head = self._head(200, "application/x-ndjson", None)
            rest = self._ndjson_bytes(hits, self._done(t0, system), None, chunked=True)
            if kind == "driphead":
                self._drip(h, q, head, float(arg) / 1000.0)
                try:
                    h.wfile.write(rest)
                except OSError:
                    pass
                return None
            return self._drip(h, q, head + rest, float(arg) / 1000.0)
        if kind == "ossbad":
            field, value = OSS_BAD_CASES[arg]
            oss["results"][1][field] = value
            return self._json(h, 200, oss)
        if kind == "bad":
            mutate, raw = BAD_CASES[arg]
            done = self._done(t0, system)
            if mutate in ("deep", "line"):  # a whole line replaced
                body = json.dumps(hits[0]).encode() + b"\n" + raw + b"\n"
                body += b"".join(json.dumps(x).encode() + b"\n" for x in [*hits[1:], done])
                chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
            else:
                mutate(hits, done)
                chunked = self._ndjson_bytes(hits, done, raw, chunked=True)
            try:
                h.wfile.write(self._head(200, "application/x-ndjson", None) + chunked)
                h.wfile.flush()
            except OSError:
                pass
            return None
        if kind == "oss":
            return self._json(h, 200, oss)
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
            self._chunk(h, json.dumps(self._done(t0, system)).encode() + b"\n")
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            with self._lock:
                self.disconnects.append(q)

    @staticmethod
    def _chunk(h, data: bytes) -> None:
        h.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        h.wfile.flush()
