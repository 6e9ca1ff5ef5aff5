"""The Lens HTTP client and the prod/local ingestor (SPEC §2).

Pure module: stdlib HTTP (`http.client`) plus threads; no dagster import. `DATA_SOURCE=local`
and `prod` share it; only who starts the server differs.

What it does:

* `LensClient.search()` sends `GET {endpoint}/search?q=&k=&system=&deadline_ms=` with
  `Authorization: Bearer <token>` when a token is configured, and reads the NDJSON stream line
  by line as bytes arrive (first-byte time and the deadline are real). A query past its
  deadline is recorded `late`, not dropped; the client keeps reading up to a hard cap
  (default `max(10 x deadline, 1 s)`: 1.5 s at the default SLA) and only then gives up with
  `deadline_exceeded`. The cap is a deadline on the whole request, held by a watchdog thread
  that shuts the socket down when it passes: it holds on every body shape (NDJSON stream, OSS
  JSON body, error body) and however slowly the status line, headers or body drip.
* Bounded retries with exponential backoff and seeded jitter on connection errors/resets,
  5xx and truncated streams; never on 4xx (`http_4xx:<status>:<server error>`), bad lines
  (`bad_line:<n>:<field>`), invalid values (`bad_value:<n>:<field> ...`, see `wire`) or
  `deadline_exceeded`. After the last retry the query is returned with its error: `search()`
  never raises for a query-level failure.
* Per-query isolation (SPEC §4): an answer with an invalid value (NaN score, infinite
  timestamp, rank 2^40 or <= 0, duplicate ranks, start_line > end_line, empty repo/path,
  negative latency, non-UTF-8) is a failed query with its reason; `collect_run` records it
  (scored 0, counted, never dropped) and goes on with every other query and system.
* Auth fails fast: a token that is not visible ASCII is refused by the constructor (the
  message never holds it); a 401/403 on `/health` raises `LensAuthRefused` at once, and so
  does a run whose first queries all get 401/403.
* Optional hedging: a second probe after `min(6 ms, 0.1 x p50 of recent latencies)` when the
  first has not finished; the first complete answer wins and the other probe is cancelled
  (its socket is shut down, which the server sees as a disconnect).
* The open-source Lens JSON response (`{"results":[{file_path, line_number, score}]}`) is read
  too: each result becomes a one-line span, `why` the sentinel `["unknown"]`, shard unknown
  (`None`); `repo` and `path_prefix` (constructor) name the repo and the path's prefix.
* The token never reaches `repr()`, logs, exception messages or returned records: every
  string that leaves the client goes through `_redact`.

`collect_run()` turns a query table into raw-run records (exactly `rawruns.RECORD_KEYS`),
stable in query order regardless of concurrency. Failed queries carry `lat_ms` = the measured
client wall time over all attempts (never null): the time the caller really waited, so a
query that timed out pushes the tail up instead of disappearing from the percentiles.

Why this is one module: the Lens client is one state machine per query (deadline, retries, hedging, streaming shard assembly, the hard response cap) over both wire shapes; its parsing and its timing rules change together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import http.client
import itertools
import json
import logging
import math
import os
import queue
import random
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterable
from urllib.parse import urlencode, urlsplit

from lens_core.collect.rawruns import RECORD_KEYS
from lens_core.collect.wire import (
    BadAnswer,
    check_done,
    check_hit,
    check_oss_result,
    check_unique_ranks,
    decode_line,
    record_problem,
    type_name,
)
from lens_core.common.settings import load_config, sla_ms

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20  # one NDJSON line longer than this is a bad line
MAX_BODY_BYTES = 64 << 20  # an OSS JSON body or error body larger than this is refused
MAX_ERROR_TEXT = 160  # server error text kept in an error string
QUERY_COLUMNS: tuple[str, ...] = ("qid", "text", "suite", "intent", "language")
EMPTY_COST: dict[str, Any] = {"probes": 0, "cpu_ms": 0.0}
UNKNOWN_CFG_HASH = "unknown"


class LensError(RuntimeError):
    """A run-level failure of the Lens client (query-level failures are recorded, not raised)."""


class LensUnreachable(LensError):
    """The endpoint cannot be reached (or refuses us) at all: fail the run with one message."""


class LensAuthRefused(LensUnreachable):
    """The endpoint answered 401/403: the credentials are wrong; no retry, one message."""


@dataclasses.dataclass
class QueryResult:
    qid: str
    hits: list[dict[str, Any]]
    shards: list[dict[str, Any]]
    cost: dict[str, Any]
    cfg_hash: str | None
    lat_ms: float | None  # server-reported `done.lat_ms` (client wall time for OSS JSON)
    client_ms: float  # measured wall time of the whole query, all attempts
    error: str | None
    attempts: int
    late: bool  # client_ms > deadline
    hedged: bool = False  # a second probe was issued
    hedge_cancelled: bool = False  # ... and the losing probe was cancelled
    hedge_winner: str | None = None  # "primary" | "hedge" when hedged and one succeeded
    req_ts: float = 0.0  # epoch ms when the first request was issued
    status: int | None = None  # HTTP status of the attempt that decided the result
    deadline_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class _Outcome:
    """The result of one probe (one HTTP request)."""

    kind: str  # "ok" | "retry" | "fatal" | "cancelled"
    error: str | None = None
    hits: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    shards: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cost: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(EMPTY_COST))
    cfg_hash: str | None = None
    lat_ms: float | None = None
    status: int | None = None


class _Probe:
    """One in-flight request whose connection another thread may cancel (the hedge's loser)
    or expire (the watchdog at the hard cap)."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.cancelled = False
        self.expired = False

    def attach(self, sock: socket.socket | None) -> bool:
        with self._lock:
            self._sock = sock
            return not (self.cancelled or self.expired)

    def _shut(self) -> None:
        sock = self._sock
        if sock is not None:
            # the plain socket's shutdown, also under TLS: SSLSocket.shutdown() would tear down
            # the TLS object under the reading thread; an already closed socket is fine
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        """Shut the socket down: wakes a reader blocked in recv and tells the server we left.
        The owning thread closes the connection itself (closing an fd from another thread
        while it is in use is racy)."""
        with self._lock:
            self.cancelled = True
            self._shut()

    def expire(self) -> None:
        """The hard cap passed: shut the socket down whatever the reader is waiting for."""
        with self._lock:
            self.expired = True
            self._shut()


class _Watchdog:
    """One daemon thread that expires probes at their deadline.

    A per-recv socket timeout does not bound a read: a body that drips one byte per second
    resets it on every byte (the status line, the headers, a chunk-size line, an OSS JSON
    body or a 5xx error body). The watchdog holds a deadline on the WHOLE request: at the
    deadline it shuts the socket down, the blocked read returns at once and the attempt is
    recorded `deadline_exceeded`."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, _Probe]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, probe: _Probe) -> int:
        with self._cv:
            seq = next(self._seq)
            heapq.heappush(self._heap, (deadline, seq, probe))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="lens-watchdog")
                self._thread.start()
            self._cv.notify()
            return seq

    def disarm(self, seq: int) -> None:
        with self._cv:
            self._heap = [e for e in self._heap if e[1] != seq]
            heapq.heapify(self._heap)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                deadline, _seq, probe = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
            probe.expire()


_WATCHDOG = _Watchdog()


def check_token(token: str, name: str = "AUTH_TOKEN") -> None:
    """A bearer token is visible ASCII (RFC 6750 b64token and then some): a control
    character, a space or a trailing newline is refused here, before anything is sent, with a
    message that names the position and never the token (http.client would otherwise raise
    with the whole header value in its message)."""
    for i, ch in enumerate(token):
        if not ("\x21" <= ch <= "\x7e"):
            what = (
                f"a control character (U+{ord(ch):04X})"
                if ord(ch) < 0x20 or ord(ch) == 0x7F
                else "a space"
                if ch.isspace()
                else "a non-ASCII character"
            )
            hint = " (a trailing newline?)" if i == len(token) - 1 and ch in "\r\n" else ""
            raise ValueError(
                f"{name} contains {what} at position {i + 1} of {len(token)}{hint}: a bearer token "
                "must be visible ASCII; the token is not shown"
            )


def _percentile(values: Iterable[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class LensClient:
    """Client for one Lens-compatible endpoint. Thread-safe: share one across workers."""

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        sla_ms: float = 150,
        k: int = 50,
        retries: int = 3,
        backoff_ms: float = 50,
        concurrency: int = 4,
        hedge: bool = False,
        timeout_connect_s: float = 2.0,
        *,
        hard_cap_ms: float | None = None,
        hedge_delay_ms: float | None = None,
        hedge_max_delay_ms: float = 6.0,
        max_backoff_ms: float = 2000.0,
        repo: str | None = None,
        path_prefix: str = "",
        seed: int = 0,
        health_cap_s: float = 5.0,
    ):
        parts = urlsplit(endpoint.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # the raw endpoint may carry credentials: name only its scheme
            raise ValueError(f"Lens endpoint must be an http(s) URL with a host, got scheme {parts.scheme!r}")
        if k <= 0 or retries < 0 or concurrency <= 0 or sla_ms <= 0:
            raise ValueError("LensClient: k, concurrency and sla_ms must be > 0, retries >= 0")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base_path = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        # user:password@ and query strings are dropped from the printable form
        self.endpoint = f"{self._scheme}://{host}:{self._port}{self._base_path}"
        self._token = token if token is not None else (os.environ.get("AUTH_TOKEN") or None)
        if self._token:
            check_token(self._token, "AUTH_TOKEN" if token is None else "the bearer token")
        self._secrets = [s for s in (self._token, parts.password) if s]
        self.sla_ms = float(sla_ms)
        self.k = int(k)
        self.retries = int(retries)
        self.backoff_ms = float(backoff_ms)
        self.max_backoff_ms = float(max_backoff_ms)
        self.concurrency = int(concurrency)
        self.hedge = bool(hedge)
        self.timeout_connect_s = float(timeout_connect_s)
        self.hard_cap_ms = hard_cap_ms
        self.hedge_delay_ms = hedge_delay_ms
        self.hedge_max_delay_ms = float(hedge_max_delay_ms)
        self.repo = repo or self._host  # the OSS JSON shape: a result's repo when it names none
        if not isinstance(path_prefix, str) or "\x00" in path_prefix:
            raise ValueError("LensClient: path_prefix must be a string without NUL")
        self.path_prefix = path_prefix  # ... and what goes before its file_path
        self.seed = int(seed)
        self.health_cap_s = float(health_cap_s)
        self._recent: deque[float] = deque(maxlen=256)
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {
            "queries": 0,
            "requests": 0,
            "retries": 0,
            "errors": 0,
            "late": 0,
            "hedges": 0,
            "hedge_wins": 0,
            "hedge_cancelled": 0,
        }

    @classmethod
    def from_env(cls, endpoint: str | None = None, **overrides: Any) -> "LensClient":
        """A client configured from the environment and the YAML config: endpoint = the first
        of `LENS_ENDPOINTS` unless given, token = `AUTH_TOKEN`, `sla_ms` = `SLA_MS`,
        `k` = `run.k`, `seed` = `run.seed`; keyword overrides win."""

        if endpoint is None:
            eps = endpoints_from_env()
            if not eps:
                raise ValueError("LENS_ENDPOINTS is empty: set it to comma-separated Lens base URLs")
            endpoint = eps[0]
        cfg = load_config()
        kw: dict[str, Any] = {"sla_ms": sla_ms(), "k": cfg.run.k, "seed": cfg.run.seed}
        kw.update(overrides)
        return cls(endpoint, **kw)

    # -- secrets ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        tok = "***" if self._token else None
        return (
            f"LensClient(endpoint={self.endpoint!r}, token={tok}, sla_ms={self.sla_ms:g}, "
            f"k={self.k}, retries={self.retries}, concurrency={self.concurrency}, hedge={self.hedge})"
        )

    __str__ = __repr__

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _bump(self, **counts: int) -> None:
        with self._lock:
            for key, n in counts.items():
                self.stats[key] = self.stats.get(key, 0) + n

    # -- HTTP plumbing -----------------------------------------------------------------------
    def _headers(self, accept: str) -> dict[str, str]:
        h = {"Accept": accept, "User-Agent": "lens-eval/0.1"}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=max(0.001, timeout_s))
        conn.connect()
        return conn

    @staticmethod
    def _conn_error(exc: BaseException) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return "conn_refused"
        if isinstance(
            exc,
            (
                ConnectionResetError,
                BrokenPipeError,
                ConnectionAbortedError,
                http.client.RemoteDisconnected,
                http.client.IncompleteRead,
            ),
        ):
            return "conn_reset"
        if isinstance(exc, socket.timeout):
            return "conn_timeout"
        return f"conn_error:{type(exc).__name__}"

    @staticmethod
    def _read_body(resp: http.client.HTTPResponse, limit: int) -> bytes:
        body = resp.read(limit + 1)
        if len(body) > limit:
            raise BadAnswer(f"bad_body:larger than {limit} bytes")
        return body

    def _error_text(self, body: bytes) -> str:
        try:
            obj = json.loads(body)
            text = obj.get("error") if isinstance(obj, dict) else None
            text = str(text) if text is not None else body.decode("utf-8", "replace")
        except (ValueError, RecursionError):
            text = body.decode("utf-8", "replace")
        text = " ".join(self._redact(text).split())
        return text[:MAX_ERROR_TEXT]

    def _attempt(self, path: str, hard_deadline: float, probe: _Probe) -> _Outcome:
        """One HTTP request for one query; never raises. The watchdog holds the hard cap on
        the whole request (connect, status line, headers, any body shape, error bodies)."""
        remaining = hard_deadline - time.monotonic()
        if remaining <= 0:
            return _Outcome("fatal", "deadline_exceeded")
        self._bump(requests=1)
        armed = _WATCHDOG.arm(hard_deadline, probe)
        try:
            out = self._attempt_io(path, hard_deadline, probe)
        finally:
            _WATCHDOG.disarm(armed)
        if probe.expired and out.kind != "ok":
            # whatever the cut read looked like (a reset, a short body, a truncated stream,
            # half a JSON document), it was the hard cap that cut it
            return _Outcome("fatal", "deadline_exceeded", status=out.status)
        return out

    def _attempt_io(self, path: str, hard_deadline: float, probe: _Probe) -> _Outcome:
        conn = None
        resp: http.client.HTTPResponse | None = None
        sock: socket.socket | None = None
        status = None
        try:
            remaining = hard_deadline - time.monotonic()
            conn = self._connect(min(self.timeout_connect_s, max(0.001, remaining)))
            # keep our own reference: http.client drops conn.sock after getresponse() when the
            # server says `Connection: close`, while the response still reads from it
            sock = conn.sock
            if not probe.attach(sock):
                return _Outcome("cancelled" if probe.cancelled else "fatal", "cancelled")
            sock.settimeout(max(0.001, hard_deadline - time.monotonic()))
            conn.request("GET", path, headers=self._headers("application/x-ndjson, application/json"))
            resp = conn.getresponse()
            status = resp.status
            if 200 <= status < 300:
                ctype = (resp.getheader("Content-Type") or "").lower()
                if "json" in ctype and "ndjson" not in ctype:
                    out = self._read_oss(resp)
                else:
                    out = self._read_ndjson(resp, sock, hard_deadline)
            else:
                text = self._error_text(self._read_body(resp, 1 << 16))
                if 400 <= status < 500:
                    out = _Outcome("fatal", f"http_4xx:{status}:{text}")
                elif status >= 500:
                    out = _Outcome("retry", f"http_5xx:{status}:{text}")
                else:
                    out = _Outcome("fatal", f"http_{status}:{text}")
            out.status = status
            return out
        except BadAnswer as exc:
            return _Outcome("fatal", self._redact(str(exc)), status=status)
        except (socket.timeout, TimeoutError) as exc:
            if probe.cancelled:
                return _Outcome("cancelled", "cancelled", status=status)
            if sock is not None:
                # connected: the socket timeout is the time left before the hard cap
                return _Outcome("fatal", "deadline_exceeded", status=status)
            return _Outcome("retry", self._conn_error(exc), status=status)
        except (OSError, http.client.HTTPException) as exc:
            if probe.cancelled:
                return _Outcome("cancelled", "cancelled", status=status)
            return _Outcome("retry", self._redact(self._conn_error(exc)), status=status)
        except Exception as exc:  # noqa: BLE001 - one query's failure never ends the run
            # e.g. http.client's ValueError on a header value: its message may hold the
            # header, so only the type is kept (and the text redacted besides)
            return _Outcome("fatal", self._redact(f"client_error:{type(exc).__name__}"), status=status)
        finally:
            probe.attach(None)
            # close the response too: with `Connection: close` it alone holds the socket, and
            # a prompt close is what tells the server to stop working on an abandoned query
            for closable in (resp, conn):
                if closable is not None:
                    try:
                        closable.close()
                    except (OSError, http.client.HTTPException):
                        pass

    @staticmethod
    def _lines(resp: http.client.HTTPResponse, sock: socket.socket, hard_deadline: float):
        """Yield raw lines (with their b"\n"; the last one without when the stream stops
        mid-line) as bytes arrive. `read1` returns whatever is available, so a line is
        handed on as soon as it is complete; the socket timeout is the time left (the
        watchdog bounds what one `read1` may spend on a dripping chunk header)."""
        buf = b""
        while True:
            nl = buf.find(b"\n")
            if nl >= 0:
                line, buf = buf[: nl + 1], buf[nl + 1 :]
                yield line
                continue
            if len(buf) > MAX_LINE_BYTES:
                yield buf  # caller reports it as too long
                return
            remaining = hard_deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("hard cap reached")
            sock.settimeout(remaining)
            data = resp.read1(1 << 16)
            if not data:
                if buf:
                    yield buf
                return
            buf += data

    def _read_ndjson(self, resp: http.client.HTTPResponse, sock: socket.socket, hard_deadline: float) -> _Outcome:
        hits: list[dict[str, Any]] = []
        hit_lines: list[int] = []
        n = 0
        for raw in self._lines(resp, sock, hard_deadline):
            n += 1
            if len(raw) > MAX_LINE_BYTES:
                raise BadAnswer(f"bad_line:{n}:longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            complete = raw.endswith(b"\n")
            try:
                obj = json.loads(decode_line(raw, n))
            except BadAnswer:
                if not complete:  # the stream stopped mid-line (maybe mid-character)
                    return _Outcome("retry", "truncated_stream")
                raise
            except RecursionError:
                raise BadAnswer(f"bad_line:{n}:not JSON (nested too deep)") from None
            except ValueError:
                if not complete:
                    return _Outcome("retry", "truncated_stream")
                raise BadAnswer(f"bad_line:{n}:not JSON") from None
            if not isinstance(obj, dict):
                raise BadAnswer(f"bad_line:{n}:not an object")
            kind = obj.get("type")
            if kind == "hit":
                if len(hits) < self.k:
                    hits.append(check_hit(obj, n))
                    hit_lines.append(n)
            elif kind == "done":
                done = check_done(obj, n)
                check_unique_ranks(hits, hit_lines)
                hits.sort(key=lambda h: h["rank"])
                return _Outcome(
                    "ok",
                    None,
                    hits=hits,
                    shards=done["shards"],
                    cost=done["cost"],
                    cfg_hash=done["cfg_hash"],
                    lat_ms=done["lat_ms"],
                )
            else:
                raise BadAnswer(f"bad_line:{n}:type {type_name(kind) if kind is None else repr(kind)[:40]}")
        return _Outcome("retry", "truncated_stream")

    def _read_oss(self, resp: http.client.HTTPResponse) -> _Outcome:
        """The open-source Lens JSON response: results[].file_path, line_number, score."""
        body = self._read_body(resp, MAX_BODY_BYTES)
        try:
            obj = json.loads(decode_line(body, 1))
        except RecursionError:
            raise BadAnswer("bad_line:1:not JSON (nested too deep)") from None
        except ValueError:
            raise BadAnswer("bad_line:1:not JSON") from None
        results = obj.get("results") if isinstance(obj, dict) else None
        if not isinstance(results, list):
            raise BadAnswer("bad_line:1:missing results")
        hits = [check_oss_result(r, i, self.repo, self.path_prefix) for i, r in enumerate(results[: self.k])]
        return _Outcome("ok", None, hits=hits, shards=[], cost=dict(EMPTY_COST), cfg_hash=None, lat_ms=None)

    # -- hedging ------------------------------------------------------------------------------
    def current_hedge_delay_ms(self) -> float:
        """`min(6 ms, 0.1 x p50)` of recent successful latencies (6 ms until 5 are known)."""
        if self.hedge_delay_ms is not None:
            return float(self.hedge_delay_ms)
        with self._lock:
            recent = list(self._recent)
        if len(recent) < 5:
            return self.hedge_max_delay_ms
        return min(self.hedge_max_delay_ms, 0.1 * _percentile(recent, 50))

    def _attempt_hedged(self, qid: str, path: str, hard_deadline: float) -> tuple[_Outcome, dict[str, Any]]:
        info: dict[str, Any] = {"hedged": False, "hedge_cancelled": False, "hedge_winner": None}
        if not self.hedge:
            return self._attempt(path, hard_deadline, _Probe("primary")), info
        results: queue.Queue = queue.Queue()

        def run(p: _Probe) -> None:
            results.put((p, self._attempt(path, hard_deadline, p)))

        primary = _Probe("primary")
        threading.Thread(target=run, args=(primary,), daemon=True, name=f"lens-{qid}-primary").start()
        try:
            p, out = results.get(timeout=self.current_hedge_delay_ms() / 1000.0)
            return out, info
        except queue.Empty:
            pass
        hedge = _Probe("hedge")
        info["hedged"] = True
        self._bump(hedges=1)
        threading.Thread(target=run, args=(hedge,), daemon=True, name=f"lens-{qid}-hedge").start()
        pending = {primary.name: primary, hedge.name: hedge}
        outcomes: dict[str, _Outcome] = {}
        while pending:
            wait_s = max(0.0, hard_deadline - time.monotonic()) + self.timeout_connect_s + 1.0
            try:
                p, out = results.get(timeout=wait_s)
            except queue.Empty:  # both probes are stuck past their own caps: give up on both
                for other in pending.values():
                    other.cancel()
                return _Outcome("fatal", "deadline_exceeded"), info
            pending.pop(p.name, None)
            outcomes[p.name] = out
            if out.kind == "ok":
                info["hedge_winner"] = p.name
                if p.name == "hedge":
                    self._bump(hedge_wins=1)
                for other in pending.values():
                    other.cancel()
                    info["hedge_cancelled"] = True
                    self._bump(hedge_cancelled=1)
                    log.info(
                        "hedge: qid=%s %s probe won; cancelled the %s probe (connection closed)",
                        qid,
                        p.name,
                        other.name,
                    )
                return out, info
        return outcomes.get("primary") or outcomes["hedge"], info

    # -- public API ---------------------------------------------------------------------------
    def _backoff_s(self, qid: str, attempt: int) -> float:
        rng = random.Random(f"{self.seed}:{qid}:{attempt}")  # seeded, independent of scheduling
        base = self.backoff_ms * (2 ** (attempt - 1))
        return min(self.max_backoff_ms, base * (0.5 + rng.random())) / 1000.0

    def search(
        self, qid: str, text: str, system: str, deadline_ms: float | None = None, extra: dict[str, str] | None = None
    ) -> QueryResult:
        """One query with retries (and a hedge when enabled). Never raises for a failed query.
        `extra`: further query parameters the endpoint understands (e.g. the reference engine's
        `arms` ablation)."""
        deadline = float(deadline_ms if deadline_ms is not None else self.sla_ms)
        cap_ms = float(self.hard_cap_ms) if self.hard_cap_ms is not None else max(10 * deadline, 1000.0)
        cap_ms = max(cap_ms, deadline)
        params = urlencode(
            {"q": text, "k": self.k, "system": system, "deadline_ms": int(round(deadline)), **(extra or {})}
        )
        path = f"{self._base_path}/search?{params}"
        req_ts = time.time() * 1000.0
        t0 = time.monotonic()
        hard_deadline = t0 + cap_ms / 1000.0
        attempts = 0
        info: dict[str, Any] = {}
        while True:
            attempts += 1
            out, hinfo = self._attempt_hedged(qid, path, hard_deadline)
            for key, v in hinfo.items():
                info[key] = info.get(key) or v
            if out.kind == "ok" or out.kind == "fatal" or attempts > self.retries:
                break
            pause = self._backoff_s(qid, attempts)
            if time.monotonic() + pause >= hard_deadline:
                log.warning("qid=%s attempt %d failed (%s); no time left before the hard cap", qid, attempts, out.error)
                break
            log.warning(
                "qid=%s attempt %d/%d failed (%s); retrying in %.0f ms",
                qid,
                attempts,
                self.retries + 1,
                out.error,
                pause * 1000,
            )
            self._bump(retries=1)
            time.sleep(pause)
        client_ms = (time.monotonic() - t0) * 1000.0
        ok = out.kind == "ok"
        lat_ms = out.lat_ms if (ok and out.lat_ms is not None) else client_ms
        late = client_ms > deadline
        error = None if ok else self._redact(out.error or "error")
        if ok:
            with self._lock:
                self._recent.append(client_ms)
        self._bump(queries=1, errors=0 if ok else 1, late=int(late))
        if error:
            log.warning("qid=%s failed after %d attempt(s): %s", qid, attempts, error)
        return QueryResult(
            qid=qid,
            hits=out.hits if ok else [],
            shards=out.shards if ok else [],
            cost=out.cost if ok else dict(EMPTY_COST),
            cfg_hash=out.cfg_hash,
            lat_ms=lat_ms,
            client_ms=client_ms,
            error=error,
            attempts=attempts,
            late=late,
            hedged=bool(info.get("hedged")),
            hedge_cancelled=bool(info.get("hedge_cancelled")),
            hedge_winner=info.get("hedge_winner"),
            req_ts=req_ts,
            status=out.status,
            deadline_ms=deadline,
        )

    def health(self, attempts: int | None = None) -> dict[str, Any]:
        """`GET /health`; raises `LensUnreachable` (one clear message) when it cannot be had,
        `LensAuthRefused` at once (no retry) when the endpoint answers 401 or 403. Each attempt
        is bounded as a whole (`health_cap_s`), however slowly the answer drips."""
        tries = (self.retries + 1) if attempts is None else max(1, attempts)
        reason = "no attempt made"
        for i in range(1, tries + 1):
            conn = None
            probe = _Probe("health")
            armed = _WATCHDOG.arm(time.monotonic() + self.health_cap_s, probe)
            try:
                conn = self._connect(self.timeout_connect_s)
                if not probe.attach(conn.sock):
                    raise socket.timeout("health probe past its cap")
                conn.sock.settimeout(max(self.timeout_connect_s, 2.0))
                conn.request("GET", f"{self._base_path}/health", headers=self._headers("application/json"))
                resp = conn.getresponse()
                body = self._read_body(resp, 1 << 20)
                if 200 <= resp.status < 300:
                    try:
                        obj = json.loads(body) if body.strip() else {}
                    except (ValueError, RecursionError):
                        obj = {"body": self._redact(body.decode("utf-8", "replace"))[:MAX_ERROR_TEXT]}
                    return obj if isinstance(obj, dict) else {"body": obj}
                if resp.status in (404, 405):
                    # reachable, just no health route (e.g. the open-source Lens server)
                    return {"status": "unknown", "http_status": resp.status}
                if resp.status in (401, 403):
                    raise LensAuthRefused(
                        self._redact(
                            f"{self.endpoint} refused the credentials: /health returned HTTP {resp.status} "
                            f"({self._error_text(body)}); check AUTH_TOKEN"
                        )
                    )
                reason = f"/health returned HTTP {resp.status}: {self._error_text(body)}"
                if 400 <= resp.status < 500:
                    break  # a routing problem: retrying will not help
            except LensAuthRefused:
                raise
            except (OSError, http.client.HTTPException, BadAnswer) as exc:
                if probe.expired:
                    reason = f"/health did not answer within {self.health_cap_s:g} s"
                else:
                    reason = f"{self._conn_error(exc)} ({self._redact(str(exc))[:MAX_ERROR_TEXT]})"
            except Exception as exc:  # noqa: BLE001 - e.g. http.client's ValueError naming a header value
                reason = f"client_error:{type(exc).__name__}"
            finally:
                _WATCHDOG.disarm(armed)
                probe.attach(None)
                if conn is not None:
                    conn.close()
            if i < tries:
                time.sleep(self._backoff_s("__health__", i))
        raise LensUnreachable(self._redact(f"cannot reach {self.endpoint}: {reason}"))


def endpoints_from_env() -> list[str]:
    """`LENS_ENDPOINTS` split on commas (blank entries dropped). Never log the raw value: a
    URL may carry credentials; log `LensClient(url).endpoint` instead."""
    return [e.strip() for e in os.environ.get("LENS_ENDPOINTS", "").split(",") if e.strip()]


# ---------------------------------------------------------------------------------------------
# The ingestor: a query table in, raw-run records out
# ---------------------------------------------------------------------------------------------
def _query_rows(queries: Any) -> list[tuple[str, str, str, str, str]]:
    columns = list(getattr(queries, "columns", []))
    missing = [c for c in QUERY_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"collect_run: query table lacks column(s) {missing} (has {columns})")
    rows = queries.select(list(QUERY_COLUMNS)).rows()
    for i, row in enumerate(rows):
        for col, v in zip(QUERY_COLUMNS, row):
            if not isinstance(v, str) or (col in ("qid", "text") and not v):
                raise ValueError(
                    f"collect_run: query row {i} column {col!r} is {v!r}; expected a non-empty string"
                    if col in ("qid", "text")
                    else f"collect_run: query row {i} column {col!r} is {v!r}; expected a string"
                )
    return rows


def _record(
    run_id: str, system: str, row: tuple, res: QueryResult, sla_ms: float, req_ts: float, cfg_hash: str | None
) -> dict[str, Any]:
    qid, _text, suite, intent, language = row
    values = {
        "run_id": run_id,
        "system": system,
        # what the engine reported (issue 17: reconciled against the declaration by the
        # cfg_hash gate); an engine that reports none is recorded as unknown, never as ours
        "cfg_hash": res.cfg_hash or UNKNOWN_CFG_HASH,
        "qid": qid,
        "suite": suite,
        "intent": intent,
        "language": language,
        "req_ts": float(req_ts),
        "sla_ms": float(sla_ms),
        "lat_ms": None if res.lat_ms is None else float(res.lat_ms),
        "hits": res.hits,
        "shards": res.shards,
        "cost": res.cost,
        "error": res.error,
        # client-side facts, emitted only if the record contract ever names them
        "hedged": res.hedged,
        "client_ms": res.client_ms,
        "attempts": res.attempts,
        "late": res.late,
    }
    unknown = [k for k in RECORD_KEYS if k not in values]
    if unknown:
        raise LensError(f"raw-run record field(s) {unknown} are not produced by the Lens client")
    return {k: values[k] for k in RECORD_KEYS}


def query_rows(queries: Any) -> list[tuple[str, str, str, str, str]]:
    """The checked (qid, text, suite, intent, language) rows of a query table (shared with
    `interleave`)."""
    return _query_rows(queries)


class Breaker:
    """The run-level circuit breaker of one endpoint (shared by `collect_run` and
    `interleave`): when the first `first_n` finished queries against it ALL failed with
    connection errors (or all got 401/403), the run fails with one `LensUnreachable`
    (`LensAuthRefused`) instead of recording thousands of identical failures. With
    `auth_streak` > 0 it also trips when that many queries in a row got 401/403 after some were
    answered (credentials revoked mid-run: the interleaved collection, where every system has
    been answered before the revocation, needs it). Thread-safe; `observe()` returns the tripped
    exception once it trips (and on every later call)."""

    def __init__(self, client: LensClient, first_n: int, auth_streak: int = 0):
        self.client = client
        self.first_n = max(0, int(first_n))
        self.auth_streak = max(0, int(auth_streak))
        self.finished = self.conn_fail = self.auth_fail = self.streak = 0
        self.tripped: LensUnreachable | None = None
        self._lock = threading.Lock()

    def observe(self, res: QueryResult) -> LensUnreachable | None:
        with self._lock:
            self.finished += 1
            refused = bool(res.error and res.error.startswith(("http_4xx:401:", "http_4xx:403:")))
            self.conn_fail += bool(res.error and res.error.startswith("conn_"))
            self.auth_fail += refused
            self.streak = self.streak + 1 if refused else 0
            if self.auth_streak and self.streak >= self.auth_streak and self.tripped is None:
                self.tripped = LensAuthRefused(
                    f"{self.client.endpoint} refused the credentials: the last {self.streak} queries all "
                    f"failed with HTTP 401/403 (last: {res.error}); check AUTH_TOKEN"
                )
            n = self.first_n
            if n > 0 and self.finished == n and self.tripped is None:
                if self.conn_fail == n:
                    self.tripped = LensUnreachable(
                        f"cannot reach {self.client.endpoint}: the first {n} queries "
                        f"all failed with connection errors (last: {res.error})"
                    )
                elif self.auth_fail == n:
                    self.tripped = LensAuthRefused(
                        f"{self.client.endpoint} refused the credentials: the first {n} queries all "
                        f"failed with HTTP 401/403 (last: {res.error}); check AUTH_TOKEN"
                    )
            return self.tripped

    def error(self) -> LensUnreachable:
        """The tripped exception, redacted, ready to raise."""
        assert self.tripped is not None
        return type(self.tripped)(self.client._redact(str(self.tripped)))


def search_isolated(
    client: LensClient, qid: str, text: str, system: str, extra: dict[str, str] | None = None
) -> QueryResult:
    """`client.search()` that never raises: a client bug fails this query only (recorded as
    `client_error:<type>`, its wall time as `lat_ms`)."""
    t_q = time.monotonic()
    try:
        return client.search(qid, text, system, extra=extra or None)
    except Exception as exc:  # noqa: BLE001 - one query's failure never ends the run
        ms = (time.monotonic() - t_q) * 1000.0
        res = QueryResult(
            qid, [], [], dict(EMPTY_COST), None, ms, ms, client._redact(f"client_error:{type(exc).__name__}"), 1, True
        )
        res.req_ts = time.time() * 1000.0 - ms
        return res


def final_record(
    client: LensClient, run_id: str, system: str, row: tuple, res: QueryResult, ts: float, cfg_hash: str | None = None
) -> tuple[dict[str, Any], QueryResult]:
    """The raw-run record of one answered query, with the last line of defence: a record that
    does not pass `wire.record_problem` becomes a failed query (the file is still written).
    Returns (record, the result as recorded)."""
    rec = _record(run_id, system, row, res, client.sla_ms, ts, cfg_hash)
    problem = record_problem(rec)
    if problem is not None:
        log.warning("qid=%s: answer not recordable (%s); recorded as a failed query", res.qid, problem)
        res = dataclasses.replace(
            res, hits=[], shards=[], cost=dict(EMPTY_COST), lat_ms=res.client_ms, error=client._redact(problem)
        )
        rec = _record(run_id, system, row, res, client.sla_ms, ts if math.isfinite(ts) else res.req_ts, cfg_hash)
    return rec, res


def sidecar_row(res: QueryResult) -> dict[str, Any]:
    """The client-side facts of one query that are not part of the raw record."""
    return {
        "qid": res.qid,
        "client_ms": res.client_ms,
        "attempts": res.attempts,
        "late": res.late,
        "hedged": res.hedged,
        "hedge_cancelled": res.hedge_cancelled,
        "error": res.error,
    }


def collect_run(
    client: LensClient,
    queries: Any,
    system: str,
    run_id: str,
    req_ts_fn: Callable[[], float] | None = None,
    progress: bool = True,
    *,
    cfg_hash: str | None = None,
    check_health: bool = True,
    unreachable_after: int = 8,
    sidecar: list[dict[str, Any]] | None = None,
    extra: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run every query of `queries` (polars DataFrame: qid, text, suite, intent, language)
    against `client` for `system` and return raw-run records in query order.

    * `concurrency` worker threads; output order = input order.
    * `req_ts_fn()` (epoch ms) is called when a query is issued; default: wall clock.
    * `cfg_hash`: the project's cfg_hash of `system` (for messages); the record holds what the
      server reported in `done.cfg_hash`, `unknown` when it reports none (OSS JSON, failed
      queries), so the cfg_hash gate can reconcile the two (issue 17).
    * `extra`: the system's declared query parameters, sent with every `/search`.
    * Fails fast with one `LensUnreachable` when `/health` cannot be reached, or when the
      first `unreachable_after` finished queries all failed with connection errors.
    * `sidecar`, when given, is filled (in query order) with the client-side facts that are
      not part of the raw record: qid, client_ms, attempts, late, hedged, hedge_cancelled.

    One system at a time: `lens_core.collect.interleave` collects every system of a week over
    the same queries interleaved (the same per-query work, breaker and records).
    """
    rows = _query_rows(queries)
    if check_health:
        client.health()
    n = len(rows)
    results: list[tuple[QueryResult, float] | None] = [None] * n
    stop = threading.Event()
    breaker = Breaker(client, min(unreachable_after, n))

    def work(i: int) -> tuple[int, QueryResult | None, float]:
        if stop.is_set():
            return i, None, 0.0
        qid, text = rows[i][0], rows[i][1]
        ts = req_ts_fn() if req_ts_fn is not None else None
        res = search_isolated(client, qid, text, system, extra)
        # circuit breaker, decided in the workers so no more queries start once it trips
        if breaker.observe(res) is not None:
            stop.set()
        return i, res, float(ts if ts is not None else res.req_ts)

    bar = None
    interactive = progress and sys.stderr.isatty()
    if interactive:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"lens {system}", unit="q", leave=False)
    log_every = max(1, n // 10)
    done = errors = late = 0
    t0 = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=client.concurrency, thread_name_prefix="lens-collect")
    try:
        futures = [pool.submit(work, i) for i in range(n)]
        for fut in as_completed(futures):
            i, res, ts = fut.result()
            if breaker.tripped is not None:
                raise breaker.error()
            if res is None:
                continue
            results[i] = (res, ts)
            done += 1
            errors += res.error is not None
            late += res.late
            if bar is not None:
                bar.update(1)
                bar.set_postfix(errors=errors, late=late, refresh=False)
            elif progress and (done % log_every == 0 or done == n):
                log.info(
                    "lens %s: %d/%d queries (%.0f%%), %d errors, %d late, %.1f s",
                    system,
                    done,
                    n,
                    100.0 * done / n,
                    errors,
                    late,
                    time.monotonic() - t0,
                )
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    records = []
    for row, item in zip(rows, results):
        assert item is not None
        res, ts = item
        rec, recorded = final_record(client, run_id, system, row, res, ts, cfg_hash)
        errors += res.error is None and recorded.error is not None
        records.append(rec)
        if sidecar is not None:
            sidecar.append(sidecar_row(recorded))
    log.info("lens %s: %d queries, %d errors, %d late (client stats %s)", system, n, errors, late, client.stats)
    return records
