"""Page the owners of an asset whose ERROR check failed (SPEC §13), once per failure.

OSS Dagster has no check-failure sensor, so `page_on_failed_checks` polls the instance.

What it reads (Dagster 1.13, works on the sqlite, postgres and in-memory storages alike):

* the checks: `context.repository_def.asset_graph.asset_check_keys`, each check's spec
  (`asset_graph.get_check_spec(key)`: blocking, metadata) and its asset's node
  (`asset_graph.get(asset_key)`: owners, group);
* one query per tick for the newest execution of every check:
  `instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)`;
* for a check with something new, its recent executions, newest first:
  `instance.event_log_storage.get_asset_check_execution_history(key, limit=100)`, then
  `record.evaluation` (`AssetCheckEvaluation`: passed, severity, metadata, description,
  partition) and, for a row still PLANNED, `instance.get_run_by_id(record.run_id)`.

Why execution-row ids and not event storage ids: the asset_check_executions table is the
one index every storage keeps for checks; `get_event_records` is deprecated in 1.13, and on
the default sqlite storage (run-sharded) a check-evaluation query by storage id is not
answered from the cross-run index. A row id is assigned when the check is *planned*; the row
becomes SUCCEEDED/FAILED when the evaluation arrives. Ids grow monotonically per instance.

Cursor (JSON, version 1):

    {"v": 1, "hwm": <largest execution id seen>, "seen": {"<asset>:<check>": <last processed id>},
     "incidents": {"lens:<asset>:<check>": {"state": ..., "event": {...}, "attempts": n, ...}}}

`seen` is the per-check "last processed" mark; a check first seen after the sensor started
starts from `hwm` (only executions newer than the last tick are news). `incidents` holds the
incidents this sensor owns, each in one state:

    trigger_pending  a failure was seen, its page not yet delivered (webhook down/slow)
    open             the page was delivered (2xx)
    resolve_pending  the check passed again, the resolve not yet delivered

Per check execution, in id order: a failed ERROR evaluation moves none -> trigger_pending,
resolve_pending -> open, and leaves trigger_pending / open as they are (a rerun that still
fails pages NONE). Anything else (passed, or failed at WARN) moves open -> resolve_pending,
drops a never-delivered trigger_pending (nothing to resolve) and leaves the rest. Then every
pending event is (re)sent; a failed delivery stays pending for the next tick, so the
webhook sees one trigger per failure (at-least-once: a POST that timed out may have arrived,
and its retry carries the same dedup key, which PagerDuty folds into one incident).

Only the newest 100 executions of a check are read per tick (older unread ones are superseded
by them). A PLANNED row whose run is still going holds that check back until the next tick; one whose
run ended in failure counts as a failure of a blocking check (the gate never judged: not a
pass), and is skipped otherwise (the check was not executed).

A refused run is not a red gate (issue 18): a run that the weekly job's guard refused (bad
settings, refused credentials, an unreachable endpoint, its partition held by another run: tag
`lens/refused`) or whose step failed with one of `preflight.REFUSAL_ERRORS` (credentials revoked
mid-run) judged nothing, so its PLANNED checks are skipped, not paged P0; and an evaluation whose
metadata carries `refused` (an older week not published without --allow-older) is a plain
refusal: neither a failure nor a pass.

First start (no cursor, or an unreadable one): the cursor is seeded at the current newest
execution of every check and nothing is paged: failures that predate the sensor are history.

Dedup key: `lens:<asset key, slash-joined>:<check name>` — stable across runs and partitions
(a check's incident is the check's latest state, whichever partition produced it).
Severity: a failed *blocking* ERROR check pages P0 (critical: it stops publication), a
non-blocking one P1 (error); `page_severity` in the evaluation's or the spec's metadata
overrides (P0..P3 or an Events v2 severity). Owners: the asset's owners plus an `owner` /
`owners` entry of the check spec's metadata.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    AssetCheckExecutionRecordStatus,
)

from lens_core.collect.preflight import REFUSAL_ERRORS
from resources.launch import REFUSED_TAG
from resources.paging import DEFAULT_PAGER, PagerResource, pd_severity

CURSOR_VERSION = 1
DEDUP_PREFIX = "lens"
HISTORY_LIMIT = 100
MAX_DETAIL_CHARS = 300
TRIGGER_PENDING, OPEN, RESOLVE_PENDING = "trigger_pending", "open", "resolve_pending"


def check_id(key: dg.AssetCheckKey) -> str:
    return f"{key.asset_key.to_user_string()}:{key.name}"


def dedup_key_for(key: dg.AssetCheckKey) -> str:
    return f"{DEDUP_PREFIX}:{check_id(key)}"


def _empty_cursor() -> dict[str, Any]:
    return {"v": CURSOR_VERSION, "hwm": 0, "seen": {}, "incidents": {}}


def parse_cursor(raw: str | None) -> dict[str, Any] | None:
    """The cursor as a dict, or None when there is none / it cannot be read (=> reseed)."""
    if not raw:
        return None
    try:
        c = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(c, dict) or c.get("v") != CURSOR_VERSION:
        return None
    out = _empty_cursor()
    out["hwm"] = int(c.get("hwm") or 0)
    out["seen"] = {str(k): int(v) for k, v in (c.get("seen") or {}).items()}
    out["incidents"] = dict(c.get("incidents") or {})
    return out


def _text(v: Any) -> Any:
    """A metadata value as something small and JSON-safe."""
    v = getattr(v, "value", v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= MAX_DETAIL_CHARS else s[:MAX_DETAIL_CHARS] + "…"


def _owners(asset_graph, key: dg.AssetCheckKey) -> tuple[list[str], str]:
    owners: list[str] = []
    group = ""
    if asset_graph.has(key.asset_key):
        node = asset_graph.get(key.asset_key)
        owners.extend(node.owners or [])
        group = node.group_name or ""
    try:
        meta = asset_graph.get_check_spec(key).metadata or {}
    except Exception:  # a check the graph no longer has
        meta = {}
    for field in ("owners", "owner"):
        v = _text(meta.get(field)) if field in meta else None
        if isinstance(v, str) and v:
            owners.extend(x.strip() for x in v.replace(";", ",").split(",") if x.strip())
    return list(dict.fromkeys(owners)), group


def _spec(asset_graph, key: dg.AssetCheckKey):
    try:
        return asset_graph.get_check_spec(key)
    except Exception:
        return None


def _page_severity(meta_eval: dict, spec, blocking: bool) -> str:
    for meta in (meta_eval or {}, (spec.metadata if spec is not None else None) or {}):
        if "page_severity" in meta:
            try:
                return pd_severity(str(_text(meta["page_severity"])))
            except ValueError:
                pass
    return "critical" if blocking else "error"


def _failure_event(asset_graph, key: dg.AssetCheckKey, record, evaluation) -> dict[str, Any]:
    spec = _spec(asset_graph, key)
    owners, group = _owners(asset_graph, key)
    if evaluation is not None:
        blocking = bool(evaluation.blocking if evaluation.blocking is not None else (spec.blocking if spec else False))
        meta = {k: _text(v) for k, v in (evaluation.metadata or {}).items()}
        what = evaluation.description or (spec.description if spec else "") or "failed"
        partition = evaluation.partition
    else:  # planned, run failed before the check judged anything
        blocking = bool(spec.blocking) if spec else False
        meta = {}
        what = "did not complete: its run failed before the check reported"
        partition = getattr(record, "partition", None)
    severity = _page_severity(meta, spec, blocking)
    asset = key.asset_key.to_user_string()
    summary = f"[{DEDUP_PREFIX}] ERROR check {key.name} on {asset} failed: {what}"
    details = {
        "asset": asset,
        "check": key.name,
        "blocking": blocking,
        "run_id": record.run_id,
        "partition": partition,
        "execution_id": record.id,
        "metadata": meta,
    }
    return {
        "summary": summary,
        "severity": severity,
        "component": asset,
        "group": group,
        "klass": key.name,
        "owners": owners,
        "details": details,
    }


def _root_cls(err) -> str | None:
    while getattr(err, "cause", None) is not None:
        err = err.cause
    return getattr(err, "cls_name", None)


def refused_run(instance, run, cache: dict[str, bool] | None = None) -> bool:
    """The run was refused (tagged by the weekly job's guard, or a step failed with one of
    `REFUSAL_ERRORS`): its checks never judged anything and page nothing."""
    if cache is not None and run.run_id in cache:
        return cache[run.run_id]
    refused = REFUSED_TAG in (run.tags or {})
    if not refused:
        try:
            failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        except Exception:  # a storage that cannot answer: judge by the tag alone
            failures = []
        refused = any(
            _root_cls(getattr(e.dagster_event.event_specific_data, "error", None)) in REFUSAL_ERRORS
            for e in failures
            if e.dagster_event is not None
        )
    if cache is not None:
        cache[run.run_id] = refused
    return refused


def _outcome(instance, asset_graph, key, record, cache: dict[str, bool] | None = None) -> tuple[str, dict | None]:
    """'fail' (with the page event), 'pass', 'skip' (nothing to judge) or 'wait' (run going)."""
    if record.status in COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES:
        ev = record.evaluation
        if ev is None:
            return "skip", None
        if not ev.passed and "refused" in (ev.metadata or {}):
            return "skip", None  # a plain refusal (an older week), not a failure nor a recovery
        if not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR:
            return "fail", _failure_event(asset_graph, key, record, ev)
        return "pass", None
    if record.status == AssetCheckExecutionRecordStatus.PLANNED:
        run = instance.get_run_by_id(record.run_id)
        if run is None:
            return "skip", None
        if not run.is_finished:
            return "wait", None
        spec = _spec(asset_graph, key)
        if run.status == dg.DagsterRunStatus.FAILURE and spec is not None and spec.blocking:
            if refused_run(instance, run, cache):
                return "skip", None
            return "fail", _failure_event(asset_graph, key, record, None)
        return "skip", None
    return "skip", None


def _apply(incidents: dict, dedup: str, outcome: str, event: dict | None) -> None:
    inc = incidents.get(dedup)
    state = inc["state"] if inc else None
    if outcome == "fail":
        if state is None:
            incidents[dedup] = {"state": TRIGGER_PENDING, "event": event, "attempts": 0, "since": time.time()}
        elif state == TRIGGER_PENDING:
            inc["event"] = event  # newest facts, still one page
        elif state == RESOLVE_PENDING:
            inc["state"] = OPEN  # the incident never closed: no new page
    elif outcome == "pass":
        if state == TRIGGER_PENDING:
            del incidents[dedup]  # never delivered: nothing to resolve
        elif state == OPEN:
            inc["state"] = RESOLVE_PENDING
            inc["attempts"] = 0


def _deliver(pager: PagerResource, incidents: dict, log) -> dict[str, int]:
    sent = {"triggered": 0, "resolved": 0, "pending": 0}
    for dedup in sorted(incidents):
        inc = incidents[dedup]
        if inc["state"] == TRIGGER_PENDING:
            ev = inc["event"]
            try:
                ok = pager.trigger(
                    dedup,
                    ev["summary"],
                    ev["severity"],
                    component=ev["component"],
                    owners=ev["owners"],
                    details=ev["details"],
                    group=ev["group"],
                    klass=ev["klass"],
                )
            except ValueError as e:  # a malformed event: log it, keep the incident pending
                log.error(f"paging {dedup}: {e}")
                ok = False
            if ok:
                inc["state"] = OPEN
                inc["paged_at"] = time.time()
                sent["triggered"] += 1
            else:
                inc["attempts"] = int(inc.get("attempts", 0)) + 1
                sent["pending"] += 1
        elif inc["state"] == RESOLVE_PENDING:
            if pager.resolve(dedup):
                del incidents[dedup]
                sent["resolved"] += 1
            else:
                inc["attempts"] = int(inc.get("attempts", 0)) + 1
                sent["pending"] += 1
    return sent


def evaluate_paging(instance, asset_graph, pager: PagerResource, raw_cursor: str | None, log) -> tuple[str, str]:
    """One tick: returns (new cursor JSON, a one-line summary)."""
    storage = instance.event_log_storage
    keys = sorted(asset_graph.asset_check_keys, key=check_id)
    latest = storage.get_latest_asset_check_execution_by_key(keys) if keys else {}
    cursor = parse_cursor(raw_cursor)
    if cursor is None:
        cursor = _empty_cursor()
        for key, rec in latest.items():
            done = rec.status in COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES
            cursor["seen"][check_id(key)] = rec.id if done else rec.id - 1
        cursor["hwm"] = max((r.id for r in latest.values()), default=0)
        msg = "first start" if not raw_cursor else "unreadable cursor"
        return json.dumps(cursor, sort_keys=True), (
            f"{msg}: seeded at execution id {cursor['hwm']} over {len(keys)} checks; history not paged"
        )

    incidents = cursor["incidents"]
    judged = 0
    refused_cache: dict[str, bool] = {}
    for key in keys:
        rec = latest.get(key)
        cid = check_id(key)
        seen = cursor["seen"].get(cid, cursor["hwm"])
        if rec is None or rec.id <= seen:
            cursor["seen"].setdefault(cid, seen)
            continue
        history = storage.get_asset_check_execution_history(key, limit=HISTORY_LIMIT)
        new = sorted((r for r in history if r.id > seen), key=lambda r: r.id)
        for r in new:
            outcome, event = _outcome(instance, asset_graph, key, r, refused_cache)
            if outcome == "wait":
                break  # its run is still going: come back to it next tick
            if outcome in ("fail", "pass"):
                _apply(incidents, dedup_key_for(key), outcome, event)
                judged += 1
            seen = r.id
        cursor["seen"][cid] = seen
    cursor["hwm"] = max([cursor["hwm"], *(r.id for r in latest.values())])
    sent = _deliver(pager, incidents, log)
    open_n = sum(1 for i in incidents.values() if i["state"] == OPEN)
    summary = (
        f"{judged} new check evaluation(s); paged {sent['triggered']}, resolved {sent['resolved']}, "
        f"pending {sent['pending']}; open incidents {open_n}"
    )
    return json.dumps(cursor, sort_keys=True), summary


def compact_cursor(instance, asset_graph, raw_cursor: str) -> str:
    """The cursor without the `seen` marks that say nothing, in compact JSON (the sensor's page in
    the UI shows the cursor). A check whose newest execution is already processed (`seen` equals
    that execution's id, at most `hwm`) reads the same from `hwm`, the default of an absent mark:
    any later execution gets a larger id than every existing one. Anything else is kept."""
    cursor = parse_cursor(raw_cursor)
    if cursor is None:
        return raw_cursor
    keys = list(asset_graph.asset_check_keys)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys) if keys else {}
    newest = {check_id(k): r.id for k, r in latest.items()}
    hwm = cursor["hwm"]
    cursor["seen"] = {
        cid: v for cid, v in cursor["seen"].items() if not (v == hwm or (v == newest.get(cid) and v <= hwm))
    }
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"))


def build_paging_sensor(
    name: str = "page_on_failed_checks",
    pager_key: str = "pager",
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
):
    """A sensor that pages through the resource `pager_key` (a PagerResource)."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={pager_key},
        description="Pages the owners of an asset whose ERROR asset check failed (once per "
        "failure, dedup key `lens:<asset>:<check>`) and resolves when it passes again.",
    )
    def _sensor(context: dg.SensorEvaluationContext, **resources):
        repo = context.repository_def
        if repo is None:
            raise dg.DagsterInvariantViolationError(f"{name}: no repository definition in the sensor context")
        pager = resources.get(pager_key) or getattr(context.resources, pager_key)
        new_cursor, summary = evaluate_paging(context.instance, repo.asset_graph, pager, context.cursor, context.log)
        context.update_cursor(compact_cursor(context.instance, repo.asset_graph, new_cursor))
        context.log.info(summary)
        return dg.SkipReason(summary)

    return _sensor


page_on_failed_checks = build_paging_sensor()
sensors = [page_on_failed_checks]
defs = dg.Definitions(sensors=sensors, resources={"pager": DEFAULT_PAGER})
