"""Several workers for real (issue 22 item 5): the weekly job on dagster-celery's executor.

End to end, every component real: a throwaway PostgreSQL cluster (tests/pgcluster.py) holds the
run and event storage (`schedules/dagster.postgres.yaml.example` as `DAGSTER_HOME/dagster.yaml`);
Debian's `redis-server` is the broker and the result backend, started by the test on a free
loopback port in a temporary directory and stopped after; two celery worker processes
(`celery -A resources.celery_app worker -n w1@%h` and `-n w2@%h`, one pool process each) serve
the `dagster` queue. `lens-eval run --source sim` with `LENS_EXECUTOR=celery` and
`LENS_CELERY_BROKER` launches one weekly partition through the code location: the run worker's
`lens_step_executor` resolves to dagster-celery's executor from that environment and hands
each step to the broker as one task.

Which worker ran each step, established three ways that must agree:
- the engine event dagster-celery's task stores before it executes a step (`Executing steps
  <key> in celery worker`, metadata `Celery worker: w1@<host>`), read from the PostgreSQL
  event log;
- the pid of the step's `STEP_START` event (the process that executed it), whose parent is the
  celery worker process this test started (its one pool process);
- the workers' own logs: one `Task execute_plan[...] succeeded` line per step each ran.
Every step ran on one of the two workers (none in the run worker), each ran several, and the
mapped per-system steps (keys with `[`), when the job has them, ran on both.

The bundle: the same partition, suite size and seed run in-process (`--in-process`, no celery,
its own data dir) must give a bundle with the same content. The attestation's `content_sha256`
(lens_core.publish.bundle) covers every artifact (name, sha256) and every attested field, among
them `created_ms`/`created_utc`, the assembly time (two runs of the same inputs differ there
only; `fingerprint` is derived from both): the test recomputes the in-process bundle's content
hash at the celery bundle's creation time, which must equal the celery bundle's attested
`content_sha256`, and checks the celery bundle with `verify`.

Skips with the reason without `redis-server`, the `celery` extra or PostgreSQL, except under CI
(`CI` set), where it fails: `.ci/run` installs Debian's redis-server and postgresql.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

from lens_core.common.hashing import content_hash
from lens_core.publish.bundle import attested_facts, verify
from resources.launch import CELERY_BROKER_ENV, EXECUTOR_ENV, lens_step_executor
from tests.browser import require_components
from tests.pgcluster import free_port, pg_cluster, require_postgres, tail

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "schedules" / "dagster.postgres.yaml.example"
PARTITION = "2026-11-29"
QUERIES_PER_SUITE = 40
WORKERS = ("w1", "w2")
REDIS_HINT = "apt-get update && apt-get install -y redis-server"
CELERY_HINT = "pip install -e '.[celery]' (dagster-celery, celery, redis; make install)"
# attested fields that record when the bundle was assembled: the only ones two runs of the same inputs differ in
ASSEMBLY_TIME = ("created_ms", "created_utc")


def require_celery() -> str:
    """redis-server's path, or skip (outside CI) / fail (in CI) with the reason."""
    problems = []
    redis = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if redis is None:
        problems.append(f"Debian's redis-server (the broker) not found; install with: {REDIS_HINT}")
    for mod in ("dagster_celery", "celery", "redis"):
        try:
            __import__(mod)
        except ImportError:
            problems.append(f"the {mod} Python package is not installed: {CELERY_HINT}")
    require_components("celery", problems)
    return redis


# ---------------------------------------------------------------------------------------------
# The executor's selection (no broker needed)
# ---------------------------------------------------------------------------------------------
def _engine(run_config: dict) -> tuple[str, dict]:
    from dagster._core.system_config.objects import ResolvedRunConfig

    import definitions

    job = definitions.defs.resolve_job_def("weekly_lens_job")
    assert job.executor_def is lens_step_executor
    (kind, cfg), *_ = ResolvedRunConfig.build(job, run_config).execution.execution_engine_config.items()
    return kind, cfg


def test_lens_executor_env_selects_celery_and_run_config_wins(monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert _engine({})[0] == "multiprocess"  # the default
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    monkeypatch.setenv(CELERY_BROKER_ENV, "redis://127.0.0.1:6399/0")
    kind, cfg = _engine({})
    assert kind == "celery" and cfg["broker"] == cfg["backend"] == "redis://127.0.0.1:6399/0", cfg
    assert "lens_assets" in cfg["include"]  # workers import the code location before forking their pool
    kind, cfg = _engine({"execution": {"config": {"celery": {"backend": "rpc://"}}}})
    assert kind == "celery" and cfg["backend"] == "rpc://" and cfg["broker"].startswith("redis://"), cfg
    assert _engine({"execution": {"config": {"multiprocess": {}}}})[0] == "multiprocess"  # run config wins
    assert _engine({"execution": {"config": {"in_process": {}}}})[0] == "in_process"
    monkeypatch.delenv(CELERY_BROKER_ENV)
    with pytest.raises(Exception) as no_broker:
        _engine({})
    assert CELERY_BROKER_ENV in _chain(no_broker.value)  # refused by name, not a worker waiting on amqp://localhost
    monkeypatch.setenv(EXECUTOR_ENV, "kubernetes")
    with pytest.raises(Exception) as unknown:
        _engine({})
    assert f"{EXECUTOR_ENV}='kubernetes'" in _chain(unknown.value)


def _chain(e: BaseException | None) -> str:
    """The messages of an exception and its causes (Dagster wraps what a config function raises)."""
    out = []
    while e is not None:
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return " <- ".join(out)


# ---------------------------------------------------------------------------------------------
# A broker and two workers
# ---------------------------------------------------------------------------------------------
def _redis_ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")
    return False


@contextlib.contextmanager
def redis_broker(binary: str):
    """redis-server on a free loopback port, its files in a temporary directory, no persistence;
    yields the port; stopped (SIGTERM, then SIGKILL) and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="lens-redis-"))
    port = free_port()
    log = root / "redis.log"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root), "--logfile", str(log)]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _redis_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {proc.poll()}):\n{tail(log)}")
            time.sleep(0.1)
        yield port
    finally:
        _stop(proc, 10)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen, grace_s: float, group: bool = False) -> None:
    """SIGTERM, then after `grace_s` SIGKILL (to its own process group when `group`: a worker
    started in its own session, with its pool process)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait(10)


def _start_workers(env: dict[str, str], logdir: Path) -> dict[str, subprocess.Popen]:
    procs = {}
    for name in WORKERS:
        out = open(logdir / f"{name}.log", "wb")
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "resources.celery_app", "worker", "-n", f"{name}@%h",
             "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        out.close()
    return procs


def _wait_ready(procs: dict[str, subprocess.Popen], logdir: Path, timeout_s: float = 240) -> dict[str, str]:
    """Each worker's full name (`w1@<host>`) once it logged `ready.`."""
    names: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while len(names) < len(procs):
        for name, p in procs.items():
            text = (logdir / f"{name}.log").read_text(errors="replace")
            m = re.search(rf"({re.escape(name)}@\S+) ready\.", text)
            if m:
                names[name] = m.group(1)
            elif p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker {name} did not become ready (exit {p.poll()}):\n{text[-4000:]}")
        time.sleep(0.5)
    return names


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


# ---------------------------------------------------------------------------------------------
# The bundle
# ---------------------------------------------------------------------------------------------
def _bundle(data: Path) -> tuple[Path, dict]:
    bundles = sorted((data / "bundles").glob("v22_*"))
    assert len(bundles) == 1, bundles
    return bundles[0], json.loads((bundles[0] / "attestation.json").read_text())


def _differences(a: dict, b: dict) -> list[str]:
    out = [
        f"artifact {n}"
        for n in sorted(set(a["artifacts"]) | set(b["artifacts"]))
        if a["artifacts"].get(n) != b["artifacts"].get(n)
    ]
    fa, fb = attested_facts(a), attested_facts(b)
    return out + [f"field {k}" for k in sorted(set(fa) | set(fb)) if k not in ASSEMBLY_TIME and fa.get(k) != fb.get(k)]


@pytest.mark.e2e
def test_weekly_partition_on_two_celery_workers(tmp_path, monkeypatch):
    redis_bin = require_celery()
    bindir = require_postgres()
    t0 = time.monotonic()
    home, data_c, data_ip, logs = (
        tmp_path / "dagster_home",
        tmp_path / "data_celery",
        tmp_path / "data_ip",
        tmp_path / "logs",
    )
    home.mkdir()
    logs.mkdir()
    shutil.copyfile(EXAMPLE, home / "dagster.yaml")
    base = {k: v for k, v in os.environ.items() if k not in ("DATA_SOURCE", "LENS_CONFIG", EXECUTOR_ENV, "PYTHONPATH")}
    run_args = [sys.executable, "-m", "lens_cli", "run", "--source", "sim", "--partition", PARTITION,
                "--queries-per-suite", str(QUERIES_PER_SUITE)]  # fmt: skip

    with pg_cluster(bindir) as pg, redis_broker(redis_bin) as port:
        broker = f"redis://127.0.0.1:{port}/0"
        for k, v in pg.env().items():  # this process reads the instance back
            monkeypatch.setenv(k, v)
        env = {**base, **pg.env(), "DAGSTER_HOME": str(home), "LENS_DATA_DIR": str(data_c), "DATA_SOURCE": "sim"}
        env.update({EXECUTOR_ENV: "celery", CELERY_BROKER_ENV: broker, "PYTHONPATH": str(REPO)})
        procs = _start_workers(env, logs)
        try:
            # the reference: the same inputs in-process, while the workers import the code location
            ip_env = {k: v for k, v in base.items() if k not in ("DAGSTER_HOME", CELERY_BROKER_ENV)}
            ip = subprocess.run(
                [*run_args, "--in-process"], cwd=REPO, capture_output=True, text=True, timeout=900,
                env={**ip_env, "LENS_DATA_DIR": str(data_ip), "DATA_SOURCE": "sim"},
            )  # fmt: skip
            assert ip.returncode in (0, 3), f"in-process run exited {ip.returncode}:\n{(ip.stdout + ip.stderr)[-4000:]}"
            hostnames = _wait_ready(procs, logs)
            assert len(set(hostnames.values())) == 2, hostnames

            proc = subprocess.run(run_args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            out = proc.stdout + proc.stderr
            worker_logs = {n: (logs / f"{n}.log").read_text(errors="replace") for n in WORKERS}
            where = f"{out[-4000:]}\n{tail(data_c / 'logs' / 'code_server.log')}\n" + "\n".join(
                f"--- {n}:\n{t[-3000:]}" for n, t in worker_logs.items()
            )
            assert proc.returncode == ip.returncode, (
                f"celery run exited {proc.returncode}, in-process {ip.returncode}:\n{where}"
            )
            run_id = re.search(r"run ([0-9a-f-]{36}) of weekly_lens_job", out).group(1)

            with dg.DagsterInstance.from_config(str(home)) as instance:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
                run = instance.get_run_by_id(run_id)
                records = instance.all_logs(run_id)
            # while the workers are up: which worker process is each step process's parent
            parent = {e.dagster_event.pid: _parent_pid(e.dagster_event.pid) for e in records if e.is_dagster_event}
        finally:
            for p in procs.values():
                _stop(p, 30, group=True)
        worker_logs = {n: (logs / f"{n}.log").read_text(errors="replace") for n in WORKERS}

    assert run.status == (dg.DagsterRunStatus.SUCCESS if proc.returncode == 0 else dg.DagsterRunStatus.FAILURE)
    assert run.run_config.get("execution") is None  # the executor came from LENS_EXECUTOR, not from run config
    # 1. dagster-celery's own record, in PostgreSQL: the worker that took each step's task
    by_event: dict[str, str] = {}
    for e in records:
        ev = e.dagster_event
        if (
            ev is not None
            and ev.event_type == dg.DagsterEventType.ENGINE_EVENT
            and "Celery worker" in (ev.engine_event_data.metadata or {})
        ):
            assert e.step_key not in by_event, f"step {e.step_key} taken twice"
            by_event[e.step_key] = ev.engine_event_data.metadata["Celery worker"].value
    starts = {
        e.step_key: e.dagster_event.pid for e in records if e.dagster_event_type == dg.DagsterEventType.STEP_START
    }
    assert len(starts) >= 20 and set(starts) == set(by_event), (sorted(starts), sorted(by_event))
    full = {v: k for k, v in hostnames.items()}
    assert set(by_event.values()) <= set(full), (set(by_event.values()), hostnames)
    ran_on = {step: full[w] for step, w in by_event.items()}
    # 2. the process that executed each step is the pool process of that very worker
    worker_pid = {n: p.pid for n, p in procs.items()}
    for step, pid in starts.items():
        assert parent[pid] == worker_pid[ran_on[step]], (step, pid, parent[pid], worker_pid)
    assert len(set(starts.values())) == len(WORKERS)  # one pool process each, none in the run worker
    # 3. the workers' own logs: one succeeded task per step each ran
    count = collections.Counter(ran_on.values())
    for n in WORKERS:
        assert len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] succeeded", worker_logs[n])) == count[n], (
            n,
            count,
            worker_logs[n][-3000:],
        )
    assert all(count[n] >= 3 for n in WORKERS), count  # several steps on each worker
    mapped = {s: w for s, w in ran_on.items() if "[" in s}
    if mapped:  # the per-system steps fan out over both workers
        assert set(mapped.values()) == set(WORKERS), mapped

    # the bundle: the same content as the in-process run's, and it verifies
    c_dir, c_att = _bundle(data_c)
    ip_dir, ip_att = _bundle(data_ip)
    at_celery_time = {**attested_facts(ip_att), **{k: c_att[k] for k in ASSEMBLY_TIME}}
    assert content_hash(ip_att["artifacts"], at_celery_time) == c_att["content_sha256"], _differences(c_att, ip_att)
    assert verify(c_dir, data_c) == []
    print(
        f"celery e2e: {len(starts)} steps, {dict(count)} ({len(mapped)} mapped: {dict(collections.Counter(mapped.values()))}), "
        f"content {c_att['content_sha256'][:12]}, wall {time.monotonic() - t0:.0f}s"
    )
