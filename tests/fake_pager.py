"""A local webhook receiver for the paging tests (PagerDuty Events v2 shaped answers).

Binds 127.0.0.1 port 0. Every POST body is parsed as JSON and kept in `received`; the ones
answered 202 are also in `accepted`. `mode` sets how it answers:

    ok        202 {"status": "success", "dedup_key": ...}
    fail      500 (the body is still recorded in `received`, not in `accepted`)
    hang      reads the body, then sleeps `hang_s` before answering 202 (past the client's
              timeout: the client gives up, the body counts in `received` only)

`stop()` closes the socket, so the URL then refuses connections ("down").
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakePager:
    def __init__(self, mode: str = "ok", hang_s: float = 1.0):
        self.mode = mode
        self.hang_s = hang_s
        self.received: list[dict] = []
        self.accepted: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        pager = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_unparsable": raw.decode("utf-8", "replace")}
                mode = pager.mode
                with pager._lock:
                    pager.received.append(body)
                    pager.headers.append(dict(self.headers))
                if mode == "hang":
                    pager._release.wait(pager.hang_s)
                if mode == "fail":
                    self._answer(500, {"status": "error", "message": "internal error"})
                    return
                if mode != "hang":
                    with pager._lock:
                        pager.accepted.append(body)
                self._answer(202, {"status": "success", "dedup_key": body.get("dedup_key")})

            def _answer(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v2/enqueue"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def events(self, action: str | None = None, accepted: bool = True) -> list[dict]:
        src = self.accepted if accepted else self.received
        with self._lock:
            return [e for e in src if action is None or e.get("event_action") == action]

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakePager":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def time_it(fn, *args, **kwargs):
    t = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t
