"""Shared pieces of the schedules layer: time zone, tags, where monitoring output goes, how
the nightly jobs find the weekly tables, and the pager resource."""

from __future__ import annotations

import json
import os
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from lens_core.common.calendar import PARTITION_START, TZ, weekly_partition_for
from lens_core.common.hashing import atomic_write_json
from lens_core.common.settings import data_dir, owners
from resources.io_manager import staging_table_path
from resources.paging import DEFAULT_PAGER

GROUP = "monitoring"
POOL = "lens_monitoring"  # op-level concurrency pool of every monitoring asset
SERIAL_TAG = "lens/serial"  # run-queue tag: one run per value at a time (dagster.yaml)
SERIAL_NIGHTLY = "nightly"  # the weekly run + every nightly / Sunday lens job
SERIAL_LVM = "lvm"  # the LVM jobs
PRIORITY_TAG = "dagster/priority"  # QueuedRunCoordinator dequeues higher first
WEEKLY_PARTITION_TAG = "lens/weekly_partition"
OWNERS_EVAL = owners("eval")
OWNERS_CAL = owners("calibration")
OWNERS_CORE = owners("core")

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITION_START, timezone=TZ, end_offset=1)


def schedules_running_by_default() -> bool:
    """Schedules and sensors start RUNNING in production (DATA_SOURCE=prod) or when
    LENS_SCHEDULES_RUNNING=1; otherwise they are listed STOPPED (local dev / demo)."""
    flag = os.environ.get("LENS_SCHEDULES_RUNNING", "").strip().lower()
    if flag in {"0", "false", "no"}:
        return False
    return flag in {"1", "true", "yes"} or os.environ.get("DATA_SOURCE", "").strip().lower() == "prod"


def default_schedule_status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if schedules_running_by_default() else dg.DefaultScheduleStatus.STOPPED


def default_sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if schedules_running_by_default() else dg.DefaultSensorStatus.STOPPED


def monitoring_dir(job: str, key: str) -> Path:
    """`$LENS_DATA_DIR/monitoring/<job>/<date or partition>/`."""
    return data_dir() / "monitoring" / job / key


def table_path(asset: str, partition: str) -> Path:
    return Path(staging_table_path(asset, partition).path)


def stored_partitions(asset: str) -> list[str]:
    d = Path(staging_table_path(asset, "x").path).parent
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.parquet") if not p.name.startswith("."))


def resolve_weekly(implied: str, needed: tuple[str, ...]) -> tuple[str, bool]:
    """The weekly partition a nightly job reads: `implied` when all `needed` tables of it are
    stored, else the newest earlier partition that has them all (fallback=True). Raises when
    none has them."""
    if all(table_path(a, implied).is_file() for a in needed):
        return implied, False
    candidates = set.intersection(*[set(stored_partitions(a)) for a in needed]) if needed else set()
    older = sorted(p for p in candidates if p < implied)
    if not older:
        raise FileNotFoundError(
            f"no weekly partition <= {implied} has all of {', '.join(needed)} under "
            f"{data_dir() / 'staging'}: run weekly_lens_job first"
        )
    return older[-1], True


def implied_weekly_for_day(day: str) -> str:
    """The weekly partition a daily partition reads: the latest Sunday run started by the end
    of that day (on a Sunday: that Sunday's run, which the queue runs before the nightlies)."""
    d = datetime.combine(datetime.fromisoformat(day).date(), time(23, 59), tzinfo=ZoneInfo(TZ))
    return weekly_partition_for(d)


def write_summary(directory: Path, summary: dict[str, Any]) -> Path:
    p = directory / "summary.json"
    atomic_write_json(p, json.loads(json.dumps(summary, default=str)))
    return p


# ---------------------------------------------------------------------------------------------
# Pager
# ---------------------------------------------------------------------------------------------
def default_pager() -> Any:
    """The `pager` resource: the code location's one PagerResource instance (Definitions.merge
    refuses two different objects under one key)."""

    return DEFAULT_PAGER


def page_functions(pager: Any, source: str):
    """(trigger(problem) -> bool, resolve(key) -> bool) over the pager resource; a pager that
    raises counts as down (False), so a monitor never crashes on the webhook."""

    def trigger(p) -> bool:
        try:
            return bool(
                pager.trigger(
                    dedup_key=p.key,
                    summary=p.summary,
                    severity=p.severity,
                    source=source,
                    component=p.component,
                    owners=list(p.owners),
                    details=p.details,
                )
            )
        except Exception:  # noqa: BLE001 - the contract says never raise; be defensive anyway
            return False

    def resolve(key: str) -> bool:
        try:
            return bool(pager.resolve(dedup_key=key))
        except Exception:  # noqa: BLE001
            return False

    return trigger, resolve
