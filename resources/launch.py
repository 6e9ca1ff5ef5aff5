"""Launch a job of the code location (workspace.yaml) on the instance and follow it from the
terminal (issue 23): the run then carries its code-location origin, so the UI lists it under its
job, in the Overview timeline and in the partition status, like a run started from the UI or a
schedule; `execute_in_process` runs have no origin.

The run goes straight to the instance's run launcher (not the queue: `make demo` starts no
daemon), runs its steps in one process (`in_process` executor: one import of the code location,
not one per step), and its events are read back from the instance's event log as they arrive
(progress lines). Dagster's own `dagster job launch` does the same through the run queue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"  # the repo root's
LOCATION = "lens_pipeline"  # workspace.yaml
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


@dataclass
class LaunchedRun:
    """What `run_weekly` reads of a run, whether launched or executed in-process."""

    run_id: str
    success: bool
    all_events: list = field(default_factory=list)  # DagsterEvent

    def get_asset_materialization_events(self) -> list:
        return [e for e in self.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]

    def get_asset_check_evaluations(self) -> list:
        return [
            e.asset_check_evaluation_data for e in self.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]


class CodeLocation:
    """The code location of workspace.yaml, loaded once (its code server stays up while in the
    `with` block), to launch several runs on `instance`."""

    def __init__(self, instance: dg.DagsterInstance, workspace: Path = WORKSPACE) -> None:
        if instance.is_ephemeral:
            raise ValueError("launching through the code location needs a persistent instance: set DAGSTER_HOME")
        self.instance = instance
        self.workspace = workspace

    def __enter__(self) -> CodeLocation:
        target = WorkspaceFileTarget(paths=[str(self.workspace)])
        # the code server's own INFO lines (start, stop) and import warnings stay out of the terminal
        self._process = WorkspaceProcessContext(self.instance, target, code_server_log_level="ERROR")
        self._process.__enter__()
        self.ctx = self._process.create_request_context()
        err = self.ctx.get_code_location_error(LOCATION)
        if err is not None:
            self._process.__exit__(None, None, None)
            raise RuntimeError(f"code location {LOCATION} did not load: {err.message.strip().splitlines()[-1]}")
        self.location = self.ctx.get_code_location(LOCATION)
        (self.repo,) = self.location.get_repositories().values()
        return self

    def __exit__(self, *exc) -> None:
        self._process.__exit__(*exc)

    def launch(
        self,
        job_name: str,
        run_config: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        on_start: Callable[[int, str], None] | None = None,
        on_entry: Callable[[Any], None] | None = None,
        asset_selection: list[str] | None = None,
        poll_s: float = 0.5,
    ) -> LaunchedRun:
        """Launch `job_name` (only `asset_selection` of it, when given) and wait for it.
        `on_start(steps, run_id)` once the run exists; `on_entry(event_log_entry)` for each event
        as it is stored."""
        instance, location, repo = self.instance, self.location, self.repo
        config = {**IN_PROCESS, **(run_config or {})}
        assets = frozenset(dg.AssetKey(a) for a in asset_selection) if asset_selection else None
        remote_job = location.get_job(
            JobSubsetSelector(
                location_name=location.name,
                repository_name=repo.name,
                job_name=job_name,
                op_selection=None,
                asset_selection=assets,
            )
        )
        plan = location.get_execution_plan(
            remote_job, config, step_keys_to_execute=None, known_state=None, instance=instance
        ).execution_plan_snapshot
        run = instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=config,
            resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags={**remote_job.tags, **(tags or {})},
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=assets,
            asset_check_selection=None,
            asset_graph=repo.asset_graph,
        )
        if on_start is not None:
            on_start(len(plan.step_keys_to_execute or []), run.run_id)
        instance.launch_run(run.run_id, self.ctx)
        entries = _follow(instance, run.run_id, on_entry, poll_s)
        final = instance.get_run_by_id(run.run_id)
        return LaunchedRun(
            run_id=run.run_id,
            success=final is not None and final.status == dg.DagsterRunStatus.SUCCESS,
            all_events=[e.dagster_event for e in entries if e.dagster_event is not None],
        )


def launch_job(instance: dg.DagsterInstance, job_name: str, *args: Any, **kwargs: Any) -> LaunchedRun:
    """One run of `job_name` through the code location (see `CodeLocation.launch`)."""
    with CodeLocation(instance) as loc:
        return loc.launch(job_name, *args, **kwargs)


def _follow(instance: dg.DagsterInstance, run_id: str, on_entry, poll_s: float) -> list:
    entries: list = []
    cursor = None
    while True:
        run = instance.get_run_by_id(run_id)
        finished = run is None or run.is_finished
        conn = instance.get_records_for_run(run_id, cursor=cursor)
        for rec in conn.records:
            entries.append(rec.event_log_entry)
            if on_entry is not None:
                on_entry(rec.event_log_entry)
        cursor = conn.cursor
        if conn.has_more:
            continue
        if finished:  # everything stored before the run finished has been read
            return entries
        time.sleep(poll_s)
