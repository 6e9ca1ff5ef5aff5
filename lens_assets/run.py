"""Materialise the weekly chain for one partition in-process (what `lens-eval run` and
`make demo` call). Runs against $DAGSTER_HOME's instance when set, so the run shows in the UI."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import dagster as dg
import polars as pl

from lens_assets.definitions import defs
from lens_core.collect.preflight import REFUSAL_ERRORS
from lens_core.common.hashing import atomic_write_json
from lens_core.common.settings import data_dir, judging_dir, owners
from lens_core.publish.bundle import partition_lock, read_published
from resources.data_source import LensDataSource
from resources.launch import LaunchedRun, execute_in_process_uncaptured, launch_job
from resources.paging import PagerResource
from resources.progress_log import ProgressPrinter, progress_run_config, with_progress


def dagster_instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def _root_message(err) -> str:
    """The innermost cause of a step failure: the user's error, not Dagster's wrapper."""
    while err.cause is not None:
        err = err.cause
    return err.message.strip()


def _root_cls(err) -> str | None:
    while err.cause is not None:
        err = err.cause
    return err.cls_name


def plan_steps(job: dg.JobDefinition) -> int:
    """The job's steps before mapping: its ops, the ops inside graph-backed assets counted one by
    one (a mapped op counts once; the progress printer adds its further systems as they run)."""
    g = job.graph
    return sum(1 for h in g.iterate_node_handles() if not hasattr(g.get_node(h).definition, "node_defs"))


def run_weekly(
    partition: str,
    queries_per_suite: int = 0,
    progress: bool = True,
    extra_resources: dict[str, Any] | None = None,
    pager: PagerResource | None = None,
    launch: bool = False,
) -> dict[str, Any]:
    """`launch`: through the code location on $DAGSTER_HOME's instance (the run has an origin:
    listed under weekly_lens_job, in the timeline and the partition status); otherwise in-process."""
    t0 = time.monotonic()
    if launch:
        if extra_resources:
            raise ValueError("run_weekly(launch=True) takes no resource objects (the run is another process)")
        with dagster_instance() as instance:
            result = launch_weekly(instance, partition, queries_per_suite, progress)
        return _outcome(partition, result, t0, pager)
    resources = dict(defs.resources or {})
    resources["lens_source"] = LensDataSource(queries_per_suite=queries_per_suite)
    resources.update(extra_resources or {})
    job = defs.resolve_job_def("weekly_lens_job")
    run_config = None
    if progress:  # compact progress lines instead of Dagster's DEBUG event stream
        job, run_config = with_progress(job), progress_run_config(plan_steps(job))
    # runs of one partition share its staging tables: one at a time (issue 18)
    with partition_lock(data_dir(), partition), dagster_instance() as instance:
        # without Dagster's output capture: a step's tables are freed when the next step starts
        result = execute_in_process_uncaptured(
            job, partition_key=partition, instance=instance, resources=resources, run_config=run_config
        )
    return _outcome(partition, result, t0, pager)


def launch_weekly(instance: dg.DagsterInstance, partition: str, queries_per_suite: int, progress: bool) -> LaunchedRun:
    """The weekly job for `partition`, launched through the code location and followed."""
    printer: dict[str, ProgressPrinter] = {}

    def started(steps: int, run_id: str) -> None:
        if progress:
            print(f"  run {run_id} of weekly_lens_job (partition {partition}), {steps} steps", flush=True)
            printer["p"] = ProgressPrinter(steps)

    def entry(e) -> None:
        if "p" in printer:
            printer["p"].handle_entry(e)

    config = {
        "resources": {"lens_source": {"config": {"queries_per_suite": int(queries_per_suite)}}},
        # the run process's console stays quiet: its events are stored and followed from here
        "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
    }
    tags = {"dagster/partition": partition, "lens/entry": "lens-eval run"}
    return launch_job(instance, "weekly_lens_job", config, tags, on_start=started, on_entry=entry)


def _outcome(partition: str, result, t0: float, pager: PagerResource | None) -> dict[str, Any]:
    """What the run did (published or not, the verdict, errors), then the publication page."""
    out: dict[str, Any] = {
        "run_id": result.run_id,
        "success": result.success,
        "wall_s": time.monotonic() - t0,
        "published": False,
        "fingerprint": None,
        "bundle": None,
        "hero_markdown": "",
        "gates_markdown": "",
    }
    for ev in result.get_asset_materialization_events():
        md = ev.materialization.metadata
        key = ev.asset_key.to_user_string()
        # Shown even when the bundle step did not finish.
        if key == "gate_summary" and "gates" in md and not out["gates_markdown"]:
            out["gates_markdown"] = md["gates"].value
        if key == "hero_table" and "headline" in md and not out["hero_markdown"]:
            out["hero_markdown"] = md["headline"].value
        if key == "release_verdict" and "verdict" in md:
            out["verdict"] = md["verdict"].value
            out["report"] = md["report"].value if "report" in md else None
        if key == "release_bundle" and "fingerprint" in md:
            out["fingerprint"] = md["fingerprint"].value
            out["bundle"] = md["bundle"].value
            out["published"] = md["published"].value
            out["refused"] = md["refused"].value if "refused" in md else ""  # an older week (issue 18)
            out["hero_markdown"] = md["hero_table"].value
            out["gates_markdown"] = md["gates"].value
            out["site"] = (
                md["served_site"].value
                if "served_site" in md and md["served_site"].value != "not published"
                else (md["site"].value if "site" in md else None)
            )
    if not result.success:
        failed = [e for e in result.all_events if e.is_step_failure]
        out["errors"] = [f"{e.step_key}: {_root_message(e.event_specific_data.error)}" for e in failed]
        # refused credentials (or settings, or a held partition) are to fix, not a publication incident: no page
        out["auth_refused"] = any(_root_cls(e.event_specific_data.error) in REFUSAL_ERRORS for e in failed)
        for line in out["errors"] if not out["auth_refused"] else []:  # a refusal: the caller's one line
            if "blocking asset check" not in line:  # a red gate is the verdict's to report, not an error
                print(f"FAILED {' '.join(line.split())}")
    out["failed_checks"] = sorted(
        f"{ev.asset_check_evaluation_data.asset_key.to_user_string()}:{ev.asset_check_evaluation_data.check_name}"
        for ev in result.all_events
        if ev.event_type_value == "ASSET_CHECK_EVALUATION"
        and not ev.asset_check_evaluation_data.passed
        and ev.asset_check_evaluation_data.severity.value == "ERROR"
    )
    # A run whose only failures are blocking checks ran correctly and refused to publish.
    out["blocked_by_gates"] = (
        not result.success and bool(out.get("errors")) and all("blocking asset check" in e for e in out["errors"])
    )
    pager = pager or PagerResource()
    if not out["published"] and not out.get("auth_refused") and not out.get("refused"):
        out["paged"] = page_publication_blocked(partition, out, pager)
    else:
        resolve_publication_page(partition, pager)
    return out


def _page_state_path():
    return data_dir() / "paging" / "publication_incidents.json"


def _page_state() -> dict[str, Any]:
    p = _page_state_path()
    return json.loads(p.read_text()) if p.is_file() else {}


def resolve_publication_page(partition: str, pager: PagerResource) -> None:
    state = _page_state()
    if state.get(partition) == "open" and pager.resolve(f"lens:publish:{partition}"):
        state[partition] = "resolved"
        atomic_write_json(_page_state_path(), state)


def judging_queue_note(partition: str) -> dict[str, Any] | None:
    """The week's judging queue, for a page about the pool gate: its size and where it is."""
    d = judging_dir(partition)
    if not (d / "queue.parquet").is_file():
        return None
    size = pl.scan_parquet(d / "queue.parquet").select(pl.len()).collect().item()
    tasks = d / "tasks.json"
    return {
        "size": size,
        "tasks": str(tasks),
        "parquet": str(d / "queue.parquet"),
        "note": f"judging queue: {size} pool member(s) to judge ({tasks}; lens-eval judge export/import)",
    }


def page_publication_blocked(partition: str, out: dict[str, Any], pager: PagerResource) -> bool:
    """P0: the weekly bundle was not published; the last green stays. One page per partition:
    a retry that is still red does not page again (state under $LENS_DATA_DIR/paging/), a later
    green run of the partition resolves it; the dedup key folds any duplicate delivery."""
    state = _page_state()
    if state.get(partition) == "open":
        print(f"still red; P0 for {partition} already open (not paged again)")
        return True
    last = read_published(data_dir())
    reasons = out.get("failed_checks") or out.get("errors") or ["release_bundle did not publish"]
    queue = judging_queue_note(partition) if any("gate_pool" in r for r in reasons) else None
    summary = (
        f"lens weekly {partition}: publication blocked ({'; '.join(reasons[:3])}); "
        f"last green stays {last['fingerprint'] if last else 'none'}" + (f"; {queue['note']}" if queue else "")
    )
    ok = pager.trigger(
        f"lens:publish:{partition}",
        summary,
        "P0",
        component="release_bundle",
        owners=owners("eval"),
        details={
            "failed": reasons,
            "partition": partition,
            "published": last["fingerprint"] if last else None,
            **({"judging_queue": {k: queue[k] for k in ("size", "tasks", "parquet")}} if queue else {}),
        },
    )
    print(f"PAGED P0: {summary}" if ok else f"PAGE FAILED (webhook down; retried on the next run): {summary}")
    if ok:
        state[partition] = "open"
        atomic_write_json(_page_state_path(), state)
    return ok
