"""Materialise the LVM group (what `lens-eval run --with-lvm` and `make demo` call): in-process, or
launched through the code location (`launch`: runs of `lvm_job` with an origin, listed under the
job in the UI, the checkpoint runs under their model's partition).

The checkpoints are partitioned by model variant, so the group runs in three steps on one
instance: corpus -> concept vectors -> sequences; one run per checkpoint partition; then the
held-out evaluation and the champion, with their checks.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import dagster as dg

from lvm_assets import LVM_ASSETS, LVM_CHECKS
from resources.launch import CodeLocation, LaunchedRun
from resources.progress_log import ProgressPrinter, progress_run_config, with_progress

JOB_NAME = "lvm_job"
ENTRY_TAGS = {"lens/entry": "lens-eval run --with-lvm"}


def _execute(everything: list, selection: list[str], key: str | None, instance: dg.DagsterInstance, progress: bool):
    """One stage in-process: with `progress`, compact progress lines instead of the DEBUG stream."""
    if not progress:
        return dg.materialize(
            everything, selection=selection, partition_key=key, instance=instance, raise_on_error=False, tags=ENTRY_TAGS
        )
    job = dg.Definitions(jobs=[dg.define_asset_job(JOB_NAME, selection=selection)], assets=everything).resolve_job_def(
        JOB_NAME
    )
    job = with_progress(job)
    return job.execute_in_process(
        run_config=progress_run_config(len(job.graph.nodes), label="lvm" + (f"[{key}]" if key else "")),
        instance=instance,
        partition_key=key,
        raise_on_error=False,
        tags=ENTRY_TAGS,
    )


def _launch(loc: CodeLocation, selection: list[str], key: str | None, progress: bool) -> LaunchedRun:
    """One stage as a run of the code location's `lvm_job` (a subset of it), followed here."""
    printer: dict[str, ProgressPrinter] = {}

    def started(steps: int, run_id: str) -> None:
        if progress:
            printer["p"] = ProgressPrinter(steps, label="lvm" + (f"[{key}]" if key else ""))

    def entry(e) -> None:
        if "p" in printer:
            printer["p"].handle_entry(e)

    tags = {**ENTRY_TAGS, **({"dagster/partition": key} if key else {})}
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    return loc.launch(JOB_NAME, quiet, tags, on_start=started, on_entry=entry, asset_selection=selection)


def run_lvm(instance: dg.DagsterInstance, log=print, progress: bool = True, launch: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()
    everything = [*LVM_ASSETS, *LVM_CHECKS]
    ckpt = next(a for a in LVM_ASSETS if a.key == dg.AssetKey("lvm_checkpoints"))
    variants = ckpt.partitions_def.get_partition_keys()
    stages: list[tuple[list[str], str | None]] = [(["lvm_corpus", "lvm_concept_vectors", "lvm_sequences"], None)]
    stages += [(["lvm_checkpoints"], v) for v in variants]
    stages += [(["lvm_eval_scores", "lvm_champion"], None)]
    out: dict[str, Any] = {"success": True, "checks": {}, "steps": []}
    with CodeLocation(instance) if launch else contextlib.nullcontext() as loc:
        return _stages(loc, everything, stages, instance, log, progress, out, t0)


def _stages(loc, everything, stages, instance, log, progress, out, t0) -> dict[str, Any]:
    for selection, key in stages:
        t = time.monotonic()
        res = (
            _launch(loc, selection, key, progress)
            if loc is not None
            else _execute(everything, selection, key, instance, progress)
        )
        label = ",".join(selection) + (f"[{key}]" if key else "")
        out["steps"].append((label, time.monotonic() - t, res.success))
        log(f"lvm: {label}: {'ok' if res.success else 'FAILED'} in {time.monotonic() - t:.1f}s")
        for ev in res.get_asset_check_evaluations():
            out["checks"][ev.check_name] = ev.passed
        if not res.success:
            out["success"] = False
            errs = [ev.event_specific_data.error for ev in res.all_events if ev.is_step_failure]
            msgs = []
            for err in errs:
                while err.cause is not None:
                    err = err.cause
                msgs.append(err.message)
            out["errors"] = msgs
            out["blocked_by_checks"] = bool(msgs) and all("blocking asset check" in m for m in msgs)
            break
    out["wall_s"] = time.monotonic() - t0
    return out
