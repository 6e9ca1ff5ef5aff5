"""The PostgreSQL deployment (issue 22 item 3) and the weekly job's executor (item 2).

End to end on a real PostgreSQL: a throwaway cluster (Debian's `postgresql` server binaries:
`initdb`, `pg_ctl`, `postgres`) in a temporary directory, on a free loopback port, as the
`postgres` user when the test runs as root (the server refuses root); its
`DAGSTER_HOME/dagster.yaml` is `schedules/dagster.postgres.yaml.example` itself, the connection
in the `DAGSTER_PG_*` variables it reads. `lens-eval run --source sim` launches one weekly
partition through the code location on that instance (steps in their own processes: the
multiprocess executor), then one sensor-daemon iteration ticks `page_on_failed_checks`, and the
run, its events and the sensor's cursor are read back from PostgreSQL with SQL.

Without the server binaries (or psycopg2, the `postgres` extra) the end-to-end test skips with
the reason, except under CI, where it fails: `.ci/run` installs Debian's postgresql.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.system_config.objects import ResolvedRunConfig

from resources.launch import (
    IN_PROCESS,
    LOCATION,
    STEP_PROCESS_JOBS,
    STEPS_ENV,
    WORKSPACE,
    lens_step_executor,
    max_concurrent_steps,
)
from tests.pgcluster import pg_cluster, require_postgres, tail

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "schedules" / "dagster.postgres.yaml.example"
PARTITION = "2026-11-29"
QUERIES_PER_SUITE = 40


# ---------------------------------------------------------------------------------------------
# The executor (item 2): multiprocess by default, its concurrency from the environment
# ---------------------------------------------------------------------------------------------
def _engine(job, run_config: dict) -> tuple[str, dict]:
    resolved = ResolvedRunConfig.build(job, run_config)
    (kind, cfg), *_ = resolved.execution.execution_engine_config.items()
    return kind, cfg


def test_weekly_job_runs_its_steps_in_processes_at_the_configured_concurrency(monkeypatch):
    import definitions

    job = definitions.defs.resolve_job_def("weekly_lens_job")
    assert job.executor_def is lens_step_executor
    # launch() leaves the executor to the job exactly for the jobs defined on it
    on_it = {j.name for j in definitions.defs.resolve_all_job_defs() if j.executor_def is lens_step_executor}
    assert on_it == set(STEP_PROCESS_JOBS)

    monkeypatch.setenv(STEPS_ENV, "3")
    kind, cfg = _engine(job, {})  # what a schedule, the UI or `dagster job execute` get
    assert kind == "multiprocess" and cfg["max_concurrent"] == 3
    assert cfg["start_method"]["forkserver"]["preload_modules"]  # the code location imported once per run
    kind, cfg = _engine(job, {"execution": {"config": {"multiprocess": {"max_concurrent": 5}}}})
    assert kind == "multiprocess" and cfg["max_concurrent"] == 5  # run config wins over the environment
    assert _engine(job, IN_PROCESS)[0] == "in_process"  # still selectable (the launchpad, a test)

    monkeypatch.delenv(STEPS_ENV)
    assert max_concurrent_steps() == min(4, os.cpu_count() or 1)
    monkeypatch.setenv(STEPS_ENV, "0")
    with pytest.raises(ValueError, match=STEPS_ENV):
        max_concurrent_steps()


# ---------------------------------------------------------------------------------------------
# One weekly partition on a PostgreSQL instance
# ---------------------------------------------------------------------------------------------
def _tick_sensors(instance: dg.DagsterInstance) -> None:
    """One iteration of the sensor daemon over the code location (what `dagster-daemon run` does
    every few seconds): the sensors that are running evaluate and their cursors are stored."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    target = WorkspaceFileTarget(paths=[str(WORKSPACE)])
    with WorkspaceProcessContext(instance, target, code_server_log_level="ERROR") as ctx:
        assert ctx.create_request_context().get_code_location_error(LOCATION) is None
        list(execute_sensor_iteration(ctx, logging.getLogger("lens.test.sensor_daemon"), None, None))


@pytest.mark.e2e
def test_weekly_partition_on_postgres_instance(tmp_path, monkeypatch):
    bindir = require_postgres()
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(EXAMPLE, home / "dagster.yaml")  # the documented file, unchanged
    with pg_cluster(bindir) as pg:
        env = {k: v for k, v in os.environ.items() if k not in ("DATA_SOURCE", "LENS_CONFIG")}
        env.update(pg.env(), DAGSTER_HOME=str(home), LENS_DATA_DIR=str(data), **{STEPS_ENV: "2"})
        for k, v in {**pg.env(), "DAGSTER_HOME": str(home), "LENS_DATA_DIR": str(data)}.items():
            monkeypatch.setenv(k, v)
        proc = subprocess.run(
            [sys.executable, "-m", "lens_cli", "run", "--source", "sim", "--partition", PARTITION,
             "--queries-per-suite", str(QUERIES_PER_SUITE)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        logs = tail(data / "logs" / "code_server.log")
        assert proc.returncode in (0, 3), f"lens-eval run exited {proc.returncode}:\n{out[-4000:]}\n{logs}"
        run_id = re.search(r"run ([0-9a-f-]{36}) of weekly_lens_job", out).group(1)
        # one progress line per step; the step processes' own console lines go to the log, not here
        assert "STEP_WORKER_STARTED" not in out and "STEP_WORKER_STARTED" in logs, out[-3000:]
        # no SQLite storage beside dagster.yaml: everything went to PostgreSQL
        assert not (home / "history").exists() and not (home / "schedules").exists(), sorted(os.listdir(home))

        # the run and its events, in PostgreSQL's own tables
        ((status, job),) = pg.query("SELECT status, pipeline_name FROM runs WHERE run_id = %s", (run_id,))
        assert job == "weekly_lens_job" and status == ("SUCCESS" if proc.returncode == 0 else "FAILURE"), status
        counts = dict(
            pg.query(
                "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s GROUP BY dagster_event_type",
                (run_id,),
            )
        )
        assert counts.get("ASSET_MATERIALIZATION", 0) >= 20 and counts.get("ASSET_CHECK_EVALUATION", 0) >= 20, counts
        ended = dg.DagsterEventType.RUN_SUCCESS if proc.returncode == 0 else dg.DagsterEventType.RUN_FAILURE
        assert counts.get(ended.value) == 1, counts  # stored under its legacy name (PIPELINE_SUCCESS)
        # the multiprocess executor: every step started in its own process
        assert counts.get("STEP_START", 0) >= 20 and counts.get("STEP_WORKER_STARTED") == counts["STEP_START"], counts
        pids = {
            json.loads(body)["dagster_event"]["pid"]
            for (body,) in pg.query(
                "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type = 'STEP_START'", (run_id,)
            )
        }
        assert len(pids) == counts["STEP_START"], pids
        assert (
            pg.query(
                "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION' "
                "AND asset_key = %s",
                (run_id, dg.AssetKey("release_bundle").to_string()),
            )
            == [(1,)]
            or proc.returncode == 3
        )

        # the paging sensor ticks once on that instance: its cursor (seeded at the newest check
        # execution, which is this run's) is stored in PostgreSQL's schedule storage
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            assert instance.get_run_by_id(run_id).status.value == status
            _tick_sensors(instance)
            states = {s.instigator_name: s for s in instance.all_instigator_state()}
        assert "page_on_failed_checks" in states, sorted(states)
        cursor = json.loads(states["page_on_failed_checks"].instigator_data.cursor)
        # seeded at the newest check execution there is: this run's, in PostgreSQL's own table
        ((newest,),) = pg.query("SELECT max(id) FROM asset_check_executions WHERE run_id = %s", (run_id,))
        assert newest and cursor["hwm"] == newest, (cursor, newest)
        selector = states["page_on_failed_checks"].selector_id
        rows = pg.query("SELECT instigator_body FROM instigators WHERE selector_id = %s", (selector,))
        assert len(rows) == 1 and "hwm" in rows[0][0], rows
        ticks = pg.query("SELECT status, tick_body FROM job_ticks WHERE selector_id = %s", (selector,))
        assert [s for s, _ in ticks] == ["SKIPPED"] and f"seeded at execution id {newest} " in ticks[0][1], ticks
