"""Materialise the weekly chain for one partition in-process (what `lens-eval run` and
`make demo` call). Runs against $DAGSTER_HOME's instance when set, so the run shows in the UI."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import dagster as dg

from lens_assets.definitions import defs
from lens_core.common.hashing import atomic_write_json
from lens_core.common.settings import data_dir, owners
from lens_core.publish.bundle import read_published
from resources.data_source import LensDataSource
from resources.paging import PagerResource


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


def run_weekly(
    partition: str,
    queries_per_suite: int = 0,
    progress: bool = True,
    extra_resources: dict[str, Any] | None = None,
    pager: PagerResource | None = None,
) -> dict[str, Any]:
    t0 = time.monotonic()
    resources = dict(defs.resources or {})
    resources["lens_source"] = LensDataSource(queries_per_suite=queries_per_suite)
    resources.update(extra_resources or {})
    job = defs.resolve_job_def("weekly_lens_job")
    with dagster_instance() as instance:
        result = job.execute_in_process(
            partition_key=partition, instance=instance, resources=resources, raise_on_error=False
        )
    out: dict[str, Any] = {
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
        # Shown even when publication is blocked (release_bundle then does not run).
        if key == "gate_summary" and "gates" in md and not out["gates_markdown"]:
            out["gates_markdown"] = md["gates"].value
        if key == "hero_table" and "headline" in md and not out["hero_markdown"]:
            out["hero_markdown"] = md["headline"].value
        if "fingerprint" in md:
            out["fingerprint"] = md["fingerprint"].value
            out["bundle"] = md["bundle"].value
            out["published"] = md["published"].value
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
        for line in out["errors"]:
            print(f"FAILED {line}")
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
    if not out["published"]:
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
    summary = (
        f"lens weekly {partition}: publication blocked ({'; '.join(reasons[:3])}); "
        f"last green stays {last['fingerprint'] if last else 'none'}"
    )
    ok = pager.trigger(
        f"lens:publish:{partition}",
        summary,
        "P0",
        component="release_bundle",
        owners=owners("eval"),
        details={"failed": reasons, "partition": partition, "published": last["fingerprint"] if last else None},
    )
    print(f"PAGED P0: {summary}" if ok else f"PAGE FAILED (webhook down; retried on the next run): {summary}")
    if ok:
        state[partition] = "open"
        atomic_write_json(_page_state_path(), state)
    return ok
