"""The calendar: weekly and daily partitions, schedule ticks and DST, in one place (SPEC §13).

The weekly run starts Sunday 02:00 US/Eastern; a weekly partition's key is that Sunday's date.
On the spring-forward Sunday 02:00 does not exist: the partition starts at 03:00 EDT (the same
instant as 02:00 EST), which is what Dagster's partitions do too. Daily jobs are keyed by the
local calendar date of their tick. Everything that needs a partition, a tick's partition or a
partition's start instant imports it from here: the Dagster partitions definitions, the
schedules, the monitors and `lens-eval run`.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

TZ = "US/Eastern"
WEEKLY_HOUR = 2  # the weekly run starts Sunday 02:00 US/Eastern
PARTITION_START = "2026-01-04"  # the first weekly (and daily) partition


def local_time(tick: datetime, tz: str = TZ) -> datetime:
    if tick.tzinfo is None:
        raise ValueError(f"tick {tick!r} has no timezone; pass an aware datetime")
    return tick.astimezone(ZoneInfo(tz))


def local_date(tick: datetime, tz: str = TZ) -> str:
    """The calendar date (in `tz`) of a tick: the partition key of the daily jobs."""
    return local_time(tick, tz).date().isoformat()


def weekly_start(partition: str, tz: str = TZ, hour: int = WEEKLY_HOUR) -> datetime:
    """The instant the weekly partition starts: its Sunday at `hour`:00 local. A wall time in
    the spring-forward gap resolves (fold=0) to the instant one hour later in the new offset,
    i.e. 02:00 -> 03:00 EDT."""
    d = date.fromisoformat(partition[:10])
    if d.weekday() != 6:
        raise ValueError(f"weekly partition {partition!r} is not a Sunday")
    naive = datetime.combine(d, time(hour))
    return datetime.fromtimestamp(naive.replace(tzinfo=ZoneInfo(tz)).timestamp(), ZoneInfo(tz))


def weekly_partition_for(tick: datetime, tz: str = TZ, hour: int = WEEKLY_HOUR) -> str:
    """The latest weekly partition (a Sunday's date) whose start is <= `tick`."""
    loc = local_time(tick, tz)
    sunday = loc.date() - timedelta(days=(loc.weekday() - 6) % 7)
    if tick.timestamp() < weekly_start(sunday.isoformat(), tz, hour).timestamp():
        sunday -= timedelta(days=7)
    return sunday.isoformat()


def latest_partition(now: datetime | None = None) -> str:
    """The partition of the most recent weekly run (the default of `lens-eval run`)."""
    return weekly_partition_for(now or datetime.now(ZoneInfo(TZ)))


def previous_week(partition: str) -> str:
    return (date.fromisoformat(partition[:10]) - timedelta(days=7)).isoformat()


def partition_t0_ms(partition: str) -> float:
    """Epoch ms of the partition's start (the weekly run's t0, stamped on its requests)."""
    return weekly_start(partition).timestamp() * 1000.0
