"""The continuous rows of SPEC §13: little work per tick, page through the `pager` resource.

Who pages what (one owner per concern, issue 23):

* a failed ERROR asset check -> `page_on_failed_checks` (lens_assets/paging_sensor.py): one
  incident per check, to the asset's owners, resolved when the check passes again;
* the week's release did not happen -> `weekly_run_monitor` (here);
* the published bundle is red, tampered or trips a tripwire -> `emergency_tripwire` (here);
* the published hero table is stale or out of its gates -> `hero_health_schedule` (here).

* `hero_health_schedule` — schedule `*/5 9-18 * * 1-5` US/Eastern: reads the published hero
  table (one small CSV) and the pointer; pages per problem; launches no run (the tick's skip
  reason says what it saw). Open incidents persist in
  `$LENS_DATA_DIR/monitoring/hero_health/state.json`. (`hero_monitoring_schedule` is the
  nightly run of `hero_monitoring_job`; this one only reads.)
* `weekly_run_monitor` — sensor every 15 minutes: the latest release_bundle materialisation; one
  incident per missed weekly run (no release_bundle for the week by Sunday 08:00). Its tick line
  also counts the red ERROR checks per group (a view: their pages are page_on_failed_checks').
* `emergency_tripwire` — sensor every minute: published pointer / attestation / red gates;
  artifact hashes and file_credit/flatline on the published tables only when the bundle's
  signature changed since the last tick.

Every page has a dedup key; a key is triggered once while red and resolved once when green.
A webhook that is down (`trigger`/`resolve` return False) is retried next tick. Cursors stay
small (the open dedup keys and a short signature digest): what a sensor saw is in its tick's
message, the emergency tripwire's cached problems in `monitoring/emergency_tripwire/state.json`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import dagster as dg

from lens_core.common.calendar import TZ
from lens_core.common.hashing import atomic_write_json
from lens_core.common.settings import data_dir
from lens_core.monitor import monitoring as M
from schedules.common import default_schedule_status, default_sensor_status, page_functions

HERO_HEALTH_CRON = "*/5 9-18 * * 1-5"
GATE_MONITOR_INTERVAL_S = 15 * 60
EMERGENCY_INTERVAL_S = 60


def _cursor(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {"open": []}
    try:
        d = json.loads(raw)
        return d if isinstance(d, dict) else {"open": []}
    except ValueError:
        return {"open": []}


def _report(log: dict, problems) -> str:
    head = f"{len(problems)} problem(s)" if problems else "all green"
    parts = [f"{k}: {', '.join(v)}" for k, v in log.items() if v]
    return head + ("; " + "; ".join(parts) if parts else "")


# ---------------------------------------------------------------------------------------------
# hero health (schedule, no run)
# ---------------------------------------------------------------------------------------------
def hero_health_state_path():
    return data_dir() / "monitoring" / "hero_health" / "state.json"


def _hero_health(context: dg.ScheduleEvaluationContext):
    now = context.scheduled_execution_time or datetime.now(timezone.utc)
    problems, info = M.hero_health(data_dir(), now)
    state_path = hero_health_state_path()
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"open": []}
    trigger, resolve = page_functions(context.resources.pager, "lens/hero_health")
    open_now, log = M.reconcile(state.get("open", []), problems, trigger, resolve)
    atomic_write_json(
        state_path,
        {
            "open": sorted(open_now),
            "checked": now.isoformat(),
            "info": info,
            "problems": [p.as_dict() for p in problems],
        },
    )
    return dg.SkipReason(f"hero health {now.isoformat()}: {_report(log, problems)} (no run launched)")


HERO_HEALTH_SCHEDULE = "hero_health_schedule"

hero_health_schedule = dg.ScheduleDefinition(
    name=HERO_HEALTH_SCHEDULE,
    cron_schedule=HERO_HEALTH_CRON,
    execution_timezone=TZ,
    execution_fn=_hero_health,
    job_name="hero_monitoring_job",
    required_resource_keys={"pager"},
    default_status=default_schedule_status(),
    description="Hero health every 5 minutes, weekdays 09:00-18:55 US/Eastern: published bundle present and "
    "fresh, per-system tail ratio and file-only credit within gates; pages the pager resource. "
    "Launches no run (hero_monitoring_schedule is the nightly run of hero_monitoring_job).",
)


# ---------------------------------------------------------------------------------------------
# gate monitor (sensor)
# ---------------------------------------------------------------------------------------------
def latest_check_evaluations(instance: dg.DagsterInstance, asset_graph) -> list[dict[str, Any]]:
    """The latest completed evaluation of every asset check in the code location."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    keys = list(asset_graph.asset_check_keys)
    if not keys:
        return []
    recs = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    out = []
    for key, rec in recs.items():
        if rec.status not in (AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED):
            continue
        ev = rec.event.dagster_event.event_specific_data if rec.event and rec.event.dagster_event else None
        node = asset_graph.get(key.asset_key) if asset_graph.has(key.asset_key) else None
        out.append(
            {
                "asset": key.asset_key.to_user_string(),
                "check": key.name,
                "group": node.group_name if node is not None else None,
                "owners": list(node.owners) if node is not None else [],
                "passed": bool(getattr(ev, "passed", rec.status == AssetCheckExecutionRecordStatus.SUCCEEDED)),
                "severity": getattr(getattr(ev, "severity", None), "value", "ERROR"),
                "partition": rec.partition,
                "run_id": rec.run_id,
            }
        )
    return sorted(out, key=lambda e: (e["asset"], e["check"]))


def _latest_release_partition(instance: dg.DagsterInstance) -> str | None:
    ev = instance.get_latest_materialization_event(dg.AssetKey("release_bundle"))
    return ev.dagster_event.partition if ev and ev.dagster_event else None


def red_error_checks_by_group(evals: list[dict[str, Any]]) -> dict[str, int]:
    """Red ERROR checks per group among the latest evaluations (a view for the tick line; the
    pages are page_on_failed_checks')."""
    return {p.component: len(p.details.get("red", [])) for p in M.gate_problems(evals)}


WEEKLY_RUN_MONITOR = "weekly_run_monitor"


@dg.sensor(
    name=WEEKLY_RUN_MONITOR,
    minimum_interval_seconds=GATE_MONITOR_INTERVAL_S,
    required_resource_keys={"pager"},
    default_status=default_sensor_status(),
    description="Every 15 minutes: pages once when a week has no release_bundle by Sunday 08:00 US/Eastern "
    "(the weekly run was missed) and resolves when it lands. Failed checks are paged per check by "
    "page_on_failed_checks; this tick's line only counts them per group.",
)
def weekly_run_monitor(context: dg.SensorEvaluationContext):
    cur = _cursor(context.cursor)
    graph = context.repository_def.asset_graph
    problems = []
    if graph.has(dg.AssetKey("release_bundle")):
        missed = M.missed_weekly_run(datetime.now(timezone.utc), _latest_release_partition(context.instance))
        if missed:
            problems.append(missed)
    evals = latest_check_evaluations(context.instance, graph)
    red = red_error_checks_by_group(evals)
    trigger, resolve = page_functions(context.resources.pager, "lens/weekly_run_monitor")
    open_now, log = M.reconcile(cur.get("open", []), problems, trigger, resolve)
    context.update_cursor(json.dumps({"open": sorted(open_now)}, separators=(",", ":")))
    view = ", ".join(f"{g}: {n}" for g, n in sorted(red.items())) or "none"
    return dg.SkipReason(
        f"weekly run monitor: {_report(log, problems)}; red ERROR checks by group "
        f"(paged by page_on_failed_checks): {view}"
    )


# ---------------------------------------------------------------------------------------------
# emergency tripwire (sensor)
# ---------------------------------------------------------------------------------------------
def emergency_tripwire_state_path():
    return data_dir() / "monitoring" / "emergency_tripwire" / "state.json"


def _digest(sig: Any) -> str:
    """A short digest of the published bundle's signature (what the cursor keeps)."""
    return hashlib.sha256(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dg.sensor(
    name="emergency_tripwire",
    minimum_interval_seconds=EMERGENCY_INTERVAL_S,
    required_resource_keys={"pager"},
    default_status=default_sensor_status(),
    description="Every minute: the published pointer, its attestation (red blocking gates), artifact "
    "hashes and file_credit/flatline on the published tables (re-checked only when the "
    "bundle changed). Pages critical.",
)
def emergency_tripwire(context: dg.SensorEvaluationContext):
    cur = _cursor(context.cursor)
    shallow, sig = M.emergency_checks(data_dir(), deep=False)
    state_path = emergency_tripwire_state_path()
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    # re-check deeply when the bundle changed, or when the cached deep problems are not there
    deep = _digest(sig) != cur.get("sig") or state.get("sig") != cur.get("sig")
    if deep:
        full, sig = M.emergency_checks(data_dir(), deep=True)
        seen = {p.key for p in shallow}
        deep_only = [p for p in full if p.key not in seen]
        cached = json.loads(json.dumps([p.as_dict() for p in deep_only], default=str))
        atomic_write_json(state_path, {"sig": _digest(sig), "deep_problems": cached})
    else:
        deep_only = [M.Problem(**{**d, "owners": tuple(d.get("owners", ()))}) for d in state.get("deep_problems", [])]
    problems = shallow + deep_only
    trigger, resolve = page_functions(context.resources.pager, "lens/emergency_tripwire")
    open_now, log = M.reconcile(cur.get("open", []), problems, trigger, resolve)
    context.update_cursor(json.dumps({"open": sorted(open_now), "sig": _digest(sig)}, separators=(",", ":")))
    return dg.SkipReason(f"emergency tripwire ({'deep' if deep else 'cached'}): {_report(log, problems)}")


SENSORS = [weekly_run_monitor, emergency_tripwire]
CONTINUOUS_SCHEDULES = [hero_health_schedule]
