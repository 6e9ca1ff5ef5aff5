"""Launch a job of the code location (workspace.yaml) on the instance and follow it from the
terminal (issue 23): the run then carries its code-location origin, so the UI lists it under its
job, in the Overview timeline and in the partition status, like a run started from the UI or a
schedule; `execute_in_process` runs have no origin.

The run goes straight to the instance's run launcher (not the queue: `make demo` starts no
daemon), and its events are read back from the instance's event log as they arrive (progress
lines). Dagster's own `dagster job launch` does the same through the run queue. The weekly job
runs its steps on `lens_step_executor` (issue 22): one process per step, at most
`LENS_MAX_CONCURRENT_STEPS` at a time (default: the cores, at most 4), forked from a forkserver
that imported the code location's packages once, so a step does not pay that import again; the
same executor serves `dagster job execute`, the schedules and the UI, and the run config may pick
`execution: {config: {in_process: {}}}` or another `max_concurrent`. With `LENS_EXECUTOR=celery`
(issue 22 item 5) the same executor hands each step to a pool of celery workers instead
(dagster-celery's executor, the `celery` extra): broker `LENS_CELERY_BROKER`, result backend
`LENS_CELERY_BACKEND` (default: the broker when it is redis, else `rpc://`); the workers run
`celery -A resources.celery_app worker -n w1@%h`, whose app is built from the same variables
(`celery_app_args`). The environment is read where the run's config is resolved (the run worker),
so `dagster job execute`, launched runs and the schedules all follow it; run config that names
`multiprocess`, `in_process` or `celery` wins over it. Other jobs (`STEP_PROCESS_JOBS`
lists the ones on that executor) are launched with the `in_process` executor (one import of the
code location, not one per step). `lens-eval run --in-process` never launches: it executes here.

The weekly job's own guard (issue 18), for every run whatever launched it (`lens-eval run`, a
schedule, the UI): `weekly_run_guard` is the first thing its first asset does. It runs the
pre-flight (`lens_core.collect.preflight`: settings, system names, token, `/health`) and then
takes the partition's lease (`lens_core.publish.bundle.acquire_partition_lease`), which
`release_weekly_partition` gives back when `release_bundle` has finished (a run that fails
before frees it too: a lease whose run is finished in the instance, or whose process is gone,
is stale). A second run of the same partition waits for the lease (`LENS_PARTITION_WAIT_S`,
default 6 h), then fails with one line. A refusal tags the run `lens/refused=<error class>`, so
the paging sensor treats it as a refused run, never as a red gate (no P0).

Why a lease and not Dagster's `tag_concurrency_limits`: those apply only to runs that go through
the QueuedRunCoordinator (the daemon), not to `lens-eval run` (which launches straight to the
run launcher, or executes in-process) nor to an instance without that dagster.yaml; the lease
holds whatever started the run, on any instance, and shares its data dir with `partition_lock`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dagster as dg
from dagster._core.definitions.executor_definition import (
    IN_PROC_CONFIG,
    MULTI_PROC_CONFIG,
    _core_in_process_executor_creation,
    _core_multiprocess_executor_creation,
    multiple_process_executor_requirements,
)
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from lens_core.collect.preflight import PreflightError, preflight
from lens_core.common.settings import data_dir, env_number
from lens_core.publish.bundle import (
    PartitionBusy,
    acquire_partition_lease,
    lease_owner,
    owner_process_alive,
    release_partition_lease,
)

WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"  # the repo root's
LOCATION = "lens_pipeline"  # workspace.yaml
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
STEPS_ENV = "LENS_MAX_CONCURRENT_STEPS"  # step processes of one run at a time (lens_step_executor)
EXECUTOR_ENV = "LENS_EXECUTOR"  # what runs the steps of lens_step_executor: multiprocess (default) or celery
EXECUTORS = ("multiprocess", "celery")
CELERY_BROKER_ENV = "LENS_CELERY_BROKER"  # e.g. redis://broker.internal:6379/0
CELERY_BACKEND_ENV = "LENS_CELERY_BACKEND"  # default: the broker when it is redis, else rpc://
CELERY_EXTRA_HINT = "pip install -e '.[celery]'"
STEP_PROCESS_JOBS = frozenset({"weekly_lens_job"})  # the jobs defined with executor_def=lens_step_executor
# What the forkserver imports once per run (the code location's heavy part), before it forks each step.
STEP_PRELOAD = ["lens_assets", "lvm_assets", "schedules", "lens_assets.paging_sensor"]
REFUSED_TAG = "lens/refused"  # set on a run the guard refused: the class name of the refusal
LEASE_WAIT_ENV = "LENS_PARTITION_WAIT_S"
DEFAULT_LEASE_WAIT_S = 6 * 3600.0


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
        with _stderr_to(data_dir() / "logs" / "code_server.log"):  # the code server starts here: see _stderr_to
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
        config = {**({} if job_name in STEP_PROCESS_JOBS else IN_PROCESS), **(run_config or {})}
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


@contextlib.contextmanager
def _stderr_to(path: Path):
    """The code server started in this block, the runs it launches and their step processes
    inherit stderr = `path`: each step process of the multiprocess executor prints a DEBUG line
    from Dagster's default console logger whatever the run's logger config, which would break the
    one-line-per-step progress; what the runs log is in the event log, read back here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def max_concurrent_steps() -> int:
    """`LENS_MAX_CONCURRENT_STEPS`, or one step process per core, at most 4 (each holds a copy of
    its step's tables: docs/deploy.md has the sizing)."""
    return int(env_number(STEPS_ENV, int, minimum=1, default=min(4, os.cpu_count() or 1)))


def executor_choice() -> str:
    """`LENS_EXECUTOR`: `multiprocess` (default) or `celery`; anything else is refused by name."""
    v = (os.environ.get(EXECUTOR_ENV) or "multiprocess").strip().lower()
    if v not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={v!r}: expected one of {', '.join(EXECUTORS)}")
    return v


def celery_app_args() -> dict[str, Any]:
    """The celery app both sides build, the run worker (dagster-celery's executor) and every worker
    (`resources/celery_app.py`), from the same environment: broker `LENS_CELERY_BROKER`, result
    backend `LENS_CELERY_BACKEND` (default: the broker when it is redis, else `rpc://`), and the
    code location's packages imported by each worker before it forks its pool (as the forkserver
    preloads them for the multiprocess executor)."""
    from dagster_celery.executor import CeleryExecutor  # lazy: the `celery` extra

    return CeleryExecutor.for_cli(**_celery_settings({})).app_args()


def _celery_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """broker, backend, include and config_source of dagster-celery's executor: the run config's
    when given, else the environment's."""
    broker = cfg.get("broker") or os.environ.get(CELERY_BROKER_ENV) or None
    if not broker:
        raise ValueError(f"the celery executor needs a broker: set {CELERY_BROKER_ENV} (e.g. redis://host:6379/0)")
    backend = cfg.get("backend") or os.environ.get(CELERY_BACKEND_ENV) or None
    if not backend:
        backend = broker if broker.split(":", 1)[0] in ("redis", "rediss") else "rpc://"
    return {
        "broker": broker,
        "backend": backend,
        "include": list(cfg.get("include") or STEP_PRELOAD),
        "config_source": dict(cfg.get("config_source") or {}),
    }


def _step_executor_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The run config of `lens_step_executor` -> that of `lens_engine`, resolved where the run's
    config is (the run worker too): the executor (none named: `LENS_EXECUTOR`) and the concurrency
    or the broker from the environment."""
    if cfg is None:
        cfg = {executor_choice(): {}}
    if "in_process" in cfg:
        return {"in_process": {}}
    if "celery" in cfg:
        return {"celery": _celery_settings(cfg["celery"])}
    mp = cfg["multiprocess"]
    max_concurrent = mp.get("max_concurrent") or max_concurrent_steps()
    start_method = mp.get("start_method") or {"forkserver": {}}
    start = {"forkserver": {"preload_modules": STEP_PRELOAD}} if "forkserver" in start_method else {"spawn": {}}
    return {"multiprocess": {"max_concurrent": max_concurrent, "start_method": start}}


_CELERY_ENGINE_CONFIG = dg.Field(
    {
        "broker": dg.Field(dg.StringSource),
        "backend": dg.Field(dg.StringSource),
        "include": dg.Field([str]),
        "config_source": dg.Field(dg.Permissive(), default_value={}),
        "retries": get_retries_config(),
    },
    description="dagster-celery's executor (the `celery` extra): each step is a task on the broker.",
)


def _engine_requirements(config: dict[str, Any]) -> list:
    return list(multiple_process_executor_requirements()) if "in_process" not in config else []


@dg.executor(
    name="lens_engine",
    config_schema=dg.Field(
        dg.Selector({"multiprocess": MULTI_PROC_CONFIG, "in_process": IN_PROC_CONFIG, "celery": _CELERY_ENGINE_CONFIG}),
        default_value={"multiprocess": {}},
    ),
    requirements=_engine_requirements,
)
def lens_engine(init_context) -> dg.Executor:
    """Dagster's multi_or_in_process executor, plus dagster-celery's as a third choice."""
    cfg = init_context.executor_config
    if "multiprocess" in cfg:
        return _core_multiprocess_executor_creation(cfg["multiprocess"])
    if "in_process" in cfg:
        return _core_in_process_executor_creation(cfg["in_process"])
    try:
        from dagster_celery.executor import CeleryExecutor  # lazy: the `celery` extra
    except ImportError as e:
        raise dg.DagsterInvariantViolationError(
            f"{EXECUTOR_ENV}=celery (or `celery` in the run config) needs dagster-celery: {CELERY_EXTRA_HINT}"
        ) from e
    c = cfg["celery"]
    return CeleryExecutor(
        retries=RetryMode.from_config(c["retries"]),
        broker=c["broker"],
        backend=c["backend"],
        include=c["include"],
        config_source=c["config_source"],
    )


lens_step_executor = lens_engine.configured(
    _step_executor_config,
    name="lens_step_executor",
    config_schema=dg.Field(
        dg.Noneable(
            dg.Selector(
                {
                    "multiprocess": dg.Field(
                        {
                            "max_concurrent": dg.Field(
                                dg.Noneable(int),
                                default_value=None,
                                description=f"default: ${STEPS_ENV}, else cores (<= 4)",
                            ),
                            "start_method": dg.Field(
                                dg.Selector({"forkserver": {}, "spawn": {}}),
                                default_value={"forkserver": {}},
                                description="forkserver: the code location imported once per run, then forked per step",
                            ),
                        }
                    ),
                    "in_process": dg.Field({}),
                    "celery": dg.Field(
                        {
                            "broker": dg.Field(
                                dg.Noneable(str), default_value=None, description=f"default: ${CELERY_BROKER_ENV}"
                            ),
                            "backend": dg.Field(
                                dg.Noneable(str),
                                default_value=None,
                                description=f"default: ${CELERY_BACKEND_ENV}, else the broker when redis, else rpc://",
                            ),
                        }
                    ),
                }
            )
        ),
        default_value=None,
        description=f"none named: ${EXECUTOR_ENV} (multiprocess, the default, or celery)",
    ),
    description="One process per step, at most $LENS_MAX_CONCURRENT_STEPS at a time, or with "
    "$LENS_EXECUTOR=celery one celery task per step on the workers of $LENS_CELERY_BROKER (issue 22).",
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


# ----------------------------------------------------------------------------------------------
# The weekly job's guard: pre-flight, then the partition's lease
# ----------------------------------------------------------------------------------------------
def _tag_refused(context, cls_name: str) -> None:
    with contextlib.suppress(Exception):  # a tag is a courtesy to the sensor; the step fails anyway
        context.instance.add_run_tags(context.run_id, {REFUSED_TAG: cls_name})


def run_is_live(instance: dg.DagsterInstance, owner: dict[str, Any]) -> bool:
    """Whether the run holding a lease still runs: its status in `instance` when the instance
    knows it; otherwise (another instance, an ephemeral one) whether its process is alive,
    except for this very process, whose earlier in-process run is over."""
    run = instance.get_run_by_id(str(owner.get("run_id") or ""))
    if run is not None:
        return not run.is_finished
    if owner.get("pid") == os.getpid():
        return False
    return owner_process_alive(owner)


def weekly_run_guard(context, source: str | None = None) -> None:
    """The first step of every weekly run: the pre-flight, then the partition's lease. A refusal
    raises (the step fails with one line, the token never in it) and tags the run."""
    try:
        preflight(source=source or None)
    except PreflightError as e:
        _tag_refused(context, type(e).__name__)
        raise  # the step failure holds the one line
    pk = context.partition_key
    wait_s = env_number(LEASE_WAIT_ENV, float, minimum=0.0, default=DEFAULT_LEASE_WAIT_S)
    try:
        stale = acquire_partition_lease(
            data_dir(),
            pk,
            lease_owner(context.run_id),
            lambda owner: run_is_live(context.instance, owner),
            wait_s,
            poll_s=min(1.0, max(0.05, wait_s / 20)),
            on_wait=lambda owner: context.log.warning(
                f"partition {pk} is held by run {owner.get('run_id')}: waiting for it (up to {wait_s:g}s)"
            ),
        )
    except PartitionBusy as e:
        _tag_refused(context, type(e).__name__)
        raise
    if stale is not None:
        context.log.info(f"partition {pk}: took over the lease of finished run {stale.get('run_id')}")


def release_weekly_partition(context) -> bool:
    """Give back this run's lease of its partition (the end of release_bundle)."""
    return release_partition_lease(data_dir(), context.partition_key, context.run_id)


def execute_in_process_uncaptured(
    job: dg.JobDefinition,
    *,
    instance: dg.DagsterInstance,
    partition_key: str | None = None,
    resources: dict[str, Any] | None = None,
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = False,
    asset_selection: list[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """`job.execute_in_process(...)` without keeping every step's output value in memory
    (`asset_selection`: a subset of the job's assets, the others read through the IO managers).

    Dagster's `execute_in_process` captures each output (for `result.output_for_node`) until the
    run ends, so an in-process weekly run held every table it produced, pool, qrels, per-query
    and all, at once (issue 22: the in-process peak grew step by step while each step alone
    needed a fraction). Our runs read outputs back through the IO managers, never from the
    result, so this executes the same in-memory job with output capture off (Dagster's own
    `core_execute_in_process`, as `execute_in_process` calls it, with the flag it fixes to
    True); everything else of the result (success, events, run id) is as before."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.execute_in_process import (
        core_execute_in_process,
        merge_run_tags,
        type_check_and_normalize_args,
    )

    run_config, _, asset_selection, resource_defs, partition_key, input_values = type_check_and_normalize_args(
        run_config=run_config, partition_key=partition_key, resources=resources, asset_selection=asset_selection
    )
    ephemeral = job.as_ephemeral_job(
        resource_defs=resource_defs, input_values=input_values, asset_selection=asset_selection or None
    )
    if not run_config and ephemeral.partitioned_config and partition_key:
        run_config = ephemeral.partitioned_config.get_run_config_for_partition_key(partition_key)
    return core_execute_in_process(
        job=InMemoryJob(job_def=ephemeral),
        run_config=run_config,
        instance=instance,
        output_capturing_enabled=False,
        raise_on_error=raise_on_error,
        run_tags=merge_run_tags(
            job_def=job,
            partition_key=partition_key,
            tags=None,
            asset_selection=asset_selection,
            instance=instance,
            run_config=run_config,
        ),
    )
