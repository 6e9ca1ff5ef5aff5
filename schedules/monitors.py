"""The continuous rows of SPEC §13: little work per tick, page through the `pager` resource.

* `hero_health` — schedule `*/5 9-18 * * 1-5` US/Eastern: reads the published hero table (one
  small CSV) and the pointer; pages per problem; launches no run (the tick's skip reason says
  what it saw). Open incidents persist in `$LENS_DATA_DIR/monitoring/hero_health/state.json`.
* `gate_monitor` — sensor every 15 minutes: reads the latest check evaluations from the
  instance (no recompute) and the latest release_bundle materialisation; one incident per group
  with red ERROR checks, one per missed weekly run. State in the sensor cursor.
* `emergency_tripwire` — sensor every minute: published pointer / attestation / red gates;
  artifact hashes and file_credit/flatline on the published tables only when the bundle's
  signature changed since the last tick (kept in the cursor).

Every page has a dedup key; a key is triggered once while red and resolved once when green.
A webhook that is down (`trigger`/`resolve` return False) is retried next tick.
"""

from __future__ import annotations

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


hero_health = dg.ScheduleDefinition(
    name="hero_health",
    cron_schedule=HERO_HEALTH_CRON,
    execution_timezone=TZ,
    execution_fn=_hero_health,
    job_name="hero_monitoring_job",
    required_resource_keys={"pager"},
    default_status=default_schedule_status(),
    description="Hero health every 5 minutes, weekdays 09:00-18:55 US/Eastern: published bundle present and "
    "fresh, per-system tail ratio and file-only credit within gates; pages the pager resource. "
    "Launches no run.",
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


@dg.sensor(
    name="gate_monitor",
    minimum_interval_seconds=GATE_MONITOR_INTERVAL_S,
    required_resource_keys={"pager"},
    default_status=default_sensor_status(),
    description="Every 15 minutes: latest check evaluations from the instance; pages one incident per "
    "group with red ERROR checks and one per missed weekly run; resolves on green.",
)
def gate_monitor(context: dg.SensorEvaluationContext):
    cur = _cursor(context.cursor)
    graph = context.repository_def.asset_graph
    evals = latest_check_evaluations(context.instance, graph)
    problems = M.gate_problems(evals)
    if graph.has(dg.AssetKey("release_bundle")):
        missed = M.missed_weekly_run(datetime.now(timezone.utc), _latest_release_partition(context.instance))
        if missed:
            problems.append(missed)
    trigger, resolve = page_functions(context.resources.pager, "lens/gate_monitor")
    open_now, log = M.reconcile(cur.get("open", []), problems, trigger, resolve)
    context.update_cursor(json.dumps({"open": sorted(open_now), "checks": len(evals)}))
    return dg.SkipReason(f"gate monitor: {len(evals)} check evaluation(s); {_report(log, problems)}")


# ---------------------------------------------------------------------------------------------
# emergency tripwire (sensor)
# ---------------------------------------------------------------------------------------------
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
    deep = sig != cur.get("sig")
    if deep:
        full, sig = M.emergency_checks(data_dir(), deep=True)
        seen = {p.key for p in shallow}
        deep_only = [p for p in full if p.key not in seen]
    else:
        deep_only = [M.Problem(**{**d, "owners": tuple(d.get("owners", ()))}) for d in cur.get("deep_problems", [])]
    problems = shallow + deep_only
    trigger, resolve = page_functions(context.resources.pager, "lens/emergency_tripwire")
    open_now, log = M.reconcile(cur.get("open", []), problems, trigger, resolve)
    context.update_cursor(
        json.dumps(
            {"open": sorted(open_now), "sig": sig, "deep_problems": [p.as_dict() for p in deep_only]}, default=str
        )
    )
    return dg.SkipReason(f"emergency tripwire ({'deep' if deep else 'cached'}): {_report(log, problems)}")


SENSORS = [gate_monitor, emergency_tripwire]
CONTINUOUS_SCHEDULES = [hero_health]
