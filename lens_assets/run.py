"""Materialise the weekly chain for one partition in-process (what `lens-eval run` and
`make demo` call). Runs against $DAGSTER_HOME's instance when set, so the run shows in the UI."""

from __future__ import annotations

import os
import time
from typing import Any

import dagster as dg

from lens_assets.definitions import defs
from resources.data_source import LensDataSource


def _instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def _root_message(err) -> str:
    """The innermost cause of a step failure: the user's error, not Dagster's wrapper."""
    while err.cause is not None:
        err = err.cause
    return err.message.strip()


def run_weekly(partition: str, queries_per_suite: int = 0, progress: bool = True,
               extra_resources: dict[str, Any] | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    resources = dict(defs.resources or {})
    resources["lens_source"] = LensDataSource(queries_per_suite=queries_per_suite)
    resources.update(extra_resources or {})
    job = defs.resolve_job_def("weekly_lens_job")
    with _instance() as instance:
        result = job.execute_in_process(partition_key=partition, instance=instance, resources=resources,
                                        raise_on_error=False)
    out: dict[str, Any] = {"success": result.success, "wall_s": time.monotonic() - t0, "published": False,
                           "fingerprint": None, "bundle": None, "hero_markdown": "", "gates_markdown": ""}
    for ev in result.get_asset_materialization_events():
        md = ev.materialization.metadata
        if "fingerprint" in md:
            out["fingerprint"] = md["fingerprint"].value
            out["bundle"] = md["bundle"].value
            out["published"] = md["published"].value
            out["hero_markdown"] = md["hero_table"].value
            out["gates_markdown"] = md["gates"].value
    if not result.success:
        failed = [e for e in result.all_events if e.is_step_failure]
        out["errors"] = [f"{e.step_key}: {_root_message(e.event_specific_data.error)}" for e in failed]
        for line in out["errors"]:
            print(f"FAILED {line}")
    return out
