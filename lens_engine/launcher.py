"""Start and stop the bundled reference engine (`python -m lens_engine serve`) on loopback.

Pure module (no dagster): `resources.data_source.LensDataSource` uses it for
`DATA_SOURCE=local`; tests and scripts can use it directly::

    with EngineServer(cache_dir) as srv:
        client = LensClient(srv.endpoint)

What it guarantees:

* The engine runs as a child process in its own process group (`start_new_session`), started
  with this interpreter (`sys.executable -m lens_engine serve --host 127.0.0.1 --port 0`), so it
  picks a free port itself; the `LISTENING http://127.0.0.1:<port>` line on its stdout names it.
* Its stderr (progress, logs) goes to a log file under `$LENS_DATA_DIR/logs/` (never to a pipe
  that could fill up); while it starts, the last log line is echoed to our logger every
  `progress_every_s`, and every startup error carries the log's tail.
* Startup fails with ONE `EngineStartError` when the engine exits early, prints no `LISTENING`
  line within `startup_timeout_s` (default 900 s, env `LENS_ENGINE_STARTUP_TIMEOUT_S`: a cold
  start may build embeddings), or its `/health` does not answer 200 in time.
* `stop()` (also on `__exit__`, on a failed start, and via `atexit` as a last resort) sends
  SIGTERM to the process group, then SIGKILL after `grace_s`. Idempotent.

The manifest helpers at the bottom write the corpus manifest whose sha256 is the corpus digest
that goes into the attestation (SPEC §11).
"""

from __future__ import annotations

import atexit
import http.client
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Mapping

from lens_core.common.hashing import atomic_write_text, canonical_json, sha256_file
from lens_core.common.settings import data_dir, env_number
from lens_engine.corpus import CORPUS_VERSION

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STARTUP_TIMEOUT_S = 900.0
LISTENING_PREFIX = "LISTENING "
TAIL_LINES = 20


class EngineStartError(RuntimeError):
    """The reference engine could not be started (the message carries its log tail)."""


def _default_startup_timeout() -> float:
    return env_number("LENS_ENGINE_STARTUP_TIMEOUT_S", float, minimum=0, strict=True, default=DEFAULT_STARTUP_TIMEOUT_S)


def _tail(path: Path | None, n: int = TAIL_LINES) -> str:
    if path is None or not path.is_file():
        return "(no engine log)"
    with open(path, "rb") as f:
        try:
            f.seek(-64 * 1024, os.SEEK_END)
        except OSError:
            f.seek(0)
        lines = f.read().decode("utf-8", "replace").splitlines()
    lines = [x for x in lines if x.strip()][-n:]
    return "\n".join(lines) if lines else "(engine log is empty)"


class EngineServer:
    """The reference engine as a child process on loopback; a context manager."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        max_functions: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float | None = None,
        *,
        log_dir: str | os.PathLike | None = None,
        shards: int | None = None,
        dense: bool = True,
        env: Mapping[str, str] | None = None,
        grace_s: float = 5.0,
        progress_every_s: float = 15.0,
        logger: logging.Logger | None = None,
    ):
        """`max_functions`: corpus cap (None = the engine's default: LENS_CORPUS_MAX_FUNCTIONS,
        4200; 0 = everything). `env`: extra environment for the child (e.g. fault
        injection `LENS_ENGINE_FAULT`); the child otherwise inherits ours. `log_dir`: where the
        engine log goes (default `$LENS_DATA_DIR/logs`). `logger`: where startup progress and
        lifecycle lines go (e.g. a Dagster `context.log`); default this module's logger."""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"EngineServer: host {host!r} is not loopback; the reference engine serves loopback only")
        self.cache_dir = Path(cache_dir)
        self.max_functions = max_functions
        self.host = host
        self.startup_timeout_s = float(startup_timeout_s) if startup_timeout_s else _default_startup_timeout()
        if log_dir is None:
            log_dir = data_dir() / "logs"
        self.log_dir = Path(log_dir)
        self.shards = shards
        self.dense = dense
        self.extra_env = dict(env or {})
        self.grace_s = float(grace_s)
        self.progress_every_s = float(progress_every_s)
        self._log = logger or log
        self.endpoint: str | None = None
        self.health: dict[str, Any] = {}
        self.log_path: Path | None = None
        self.startup_s: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._reader: threading.Thread | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stdout_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._atexit = None
        self._lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_exited(self, timeout_s: float) -> bool:
        """True when the engine process has exited (waiting up to `timeout_s` for it)."""
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "lens_engine",
            "serve",
            "--host",
            self.host,
            "--port",
            "0",
            "--cache-dir",
            str(self.cache_dir),
        ]
        if self.max_functions is not None:
            cmd += ["--max-functions", str(int(self.max_functions))]
        if self.shards is not None:
            cmd += ["--shards", str(int(self.shards))]
        if not self.dense:
            cmd.append("--no-dense")
        return cmd

    def start(self) -> "EngineServer":
        with self._lock:
            if self._proc is not None:
                raise RuntimeError("EngineServer.start(): already started")
            t0 = time.monotonic()
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            self.log_path = self.log_dir / f"lens-engine-{stamp}-{os.getpid()}-{id(self) & 0xFFFF:04x}.log"
            self._log_file = open(self.log_path, "ab", buffering=0)
            env = dict(os.environ)
            env.update(self.extra_env)
            # the child must import lens_engine/lens_core even when the repo is not installed
            env["PYTHONPATH"] = os.pathsep.join(
                [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            )
            env.setdefault("PYTHONUNBUFFERED", "1")
            env.setdefault("HF_HUB_OFFLINE", "1")
            env.setdefault("TRANSFORMERS_OFFLINE", "1")
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._log.info(f"starting the reference engine (cache {self.cache_dir}, log {self.log_path})")
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._log_file,
                env=env,
                cwd=str(REPO_ROOT),
                start_new_session=True,
                close_fds=True,
            )
            ref = weakref.ref(self)
            self._atexit = lambda: (lambda s: s.stop() if s is not None else None)(ref())
            atexit.register(self._atexit)
            self._reader = threading.Thread(target=self._read_stdout, name="lens-engine-stdout", daemon=True)
            self._reader.start()
        try:
            self.endpoint = self._wait_listening(t0)
            self.health = self._wait_health(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self._log.info(
            f"reference engine ready at {self.endpoint} in {self.startup_s:.1f}s "
            f"(pid {self._proc.pid}, {self.health.get('functions', '?')} functions)"
        )
        return self

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL after `grace_s`; returns the exit code."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.grace_s)
                except subprocess.TimeoutExpired:
                    self._log.warning(
                        f"reference engine (pid {proc.pid}) ignored SIGTERM for {self.grace_s:.0f}s: SIGKILL"
                    )
                    self._signal(proc, signal.SIGKILL)
                    proc.wait(timeout=30)
            else:
                # the leader is gone; make sure nothing it spawned in its group lingers
                self._signal(proc, signal.SIGKILL)
            code = proc.returncode
            if proc.stdout is not None:
                try:
                    proc.stdout.close()
                except OSError:
                    pass
            if self._reader is not None:
                self._reader.join(timeout=2)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if self._atexit is not None:
                atexit.unregister(self._atexit)
                self._atexit = None
            self._proc = None
            self._log.info(f"reference engine stopped (exit code {code})")
            return code

    def log_tail(self, n: int = TAIL_LINES) -> str:
        return _tail(self.log_path, n)

    def __enter__(self) -> "EngineServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EngineServer(endpoint={self.endpoint!r}, pid={self.pid}, running={self.running()})"

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # our own child's group (start_new_session): pgid == pid
        except (ProcessLookupError, PermissionError):
            pass

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self._stdout_tail.append(line)
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)

    def _fail(self, what: str) -> EngineStartError:
        code = self._proc.poll() if self._proc is not None else None
        status = f"exit code {code}" if code is not None else "still running; stopped"
        stdout = "\n".join(x for x in self._stdout_tail if x.strip())
        extra = f"\n--- engine stdout ---\n{stdout}" if stdout else ""
        return EngineStartError(
            f"reference engine failed to start: {what} ({status}); log {self.log_path}\n"
            f"--- engine log tail ---\n{self.log_tail()}{extra}"
        )

    def _wait_listening(self, t0: float) -> str:
        deadline = t0 + self.startup_timeout_s
        next_progress = time.monotonic() + self.progress_every_s
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise self._fail(
                    f"no LISTENING line within {self.startup_timeout_s:.0f}s "
                    "(raise LENS_ENGINE_STARTUP_TIMEOUT_S for a cold cache)"
                )
            try:
                line = self._lines.get(timeout=min(0.25, deadline - now))
            except queue.Empty:
                line = ""
            if line is None:  # stdout closed: the engine is exiting
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    raise self._fail("the engine closed its stdout before it was listening") from None
                raise self._fail("the engine exited before it was listening")
            if line.startswith(LISTENING_PREFIX):
                url = line[len(LISTENING_PREFIX) :].strip()
                if not url.startswith("http://"):
                    raise self._fail(f"unexpected LISTENING line {line!r}")
                return url
            if self._proc.poll() is not None and self._lines.empty():
                continue  # the reader will deliver None once stdout is drained
            if time.monotonic() >= next_progress:
                last = self.log_tail(1)
                self._log.info(f"reference engine starting ({time.monotonic() - t0:.0f}s): {last}")
                next_progress = time.monotonic() + self.progress_every_s

    def _wait_health(self, t0: float) -> dict[str, Any]:
        from urllib.parse import urlsplit

        parts = urlsplit(self.endpoint)
        deadline = max(t0 + self.startup_timeout_s, time.monotonic() + 10.0)
        reason = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._fail("the engine exited while answering /health")
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2.0)
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                body = resp.read(1 << 20)
                if resp.status == 200:
                    obj = json.loads(body) if body.strip() else {}
                    return obj if isinstance(obj, dict) else {"body": obj}
                reason = f"/health returned HTTP {resp.status}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = f"/health: {type(exc).__name__}"
            finally:
                conn.close()
            time.sleep(0.1)
        raise self._fail(f"{self.endpoint}/health did not answer 200 in time ({reason})")


# ---------------------------------------------------------------------------------------------
# The corpus manifest (its sha256 is the corpus digest)
# ---------------------------------------------------------------------------------------------
def manifest_text(corpus) -> str:
    """The canonical manifest document of a `lens_engine` corpus: the exact text whose sha256 is
    `corpus.digest` (see `lens_engine.corpus.manifest_digest`)."""

    return canonical_json({"version": CORPUS_VERSION, "files": [list(r) for r in sorted(corpus.manifest)]})


def write_manifest(corpus, directory: str | os.PathLike) -> Path:
    """Write the manifest atomically to `<directory>/manifest-<digest[:24]>.json` (content
    addressed: an existing file is kept) and check that its sha256 is the corpus digest."""

    target = Path(directory) / f"manifest-{corpus.digest[:24]}.json"
    if not target.is_file():
        atomic_write_text(target, manifest_text(corpus))
    got = sha256_file(target)
    if got != corpus.digest:
        raise RuntimeError(f"{target}: sha256 {got} is not the corpus digest {corpus.digest}")
    return target
