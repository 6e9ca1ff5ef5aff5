"""SPEC §13 as code: one job per row, each with its schedule in US/Eastern.

`SCHEDULE_TABLE` is the single source of the table in README.md (`schedule_table_markdown`).
Partition rule per kind of row (tick = the scheduled execution time, in US/Eastern):

* `weekly`  — the Sunday 02:00 weekly run: partition = `weekly_partition_for(tick)`, the
  Sunday's date (on the spring-forward Sunday the tick is 03:00 EDT and the partition is still
  that Sunday; Dagster's weekly partition starts at 03:00 that day too).
* `daily`   — nightly jobs: partition = the tick's date; tag `lens/weekly_partition` = the
  latest weekly partition started by the tick (what the job reads; it falls back to the newest
  stored one if that week's tables are not there).
* `sunday`  — Sunday 03:00-06:00 jobs: partition = that Sunday's weekly partition.
* `lvm`     — LVM jobs (unpartitioned): no partition; run key by date.

Run key of every tick: `<job>:<partition or date>`, so a re-evaluated tick never launches twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from lens_assets.common import weekly_partitions
from lens_core.common.calendar import TZ, local_date, weekly_partition_for
from lens_core.common.settings import data_source, load_config
from lvm_core.settings import PROFILE_TAG as LVM_PROFILE_TAG
from schedules import assets as A
from schedules.common import (
    PRIORITY_TAG,
    SERIAL_LVM,
    SERIAL_NIGHTLY,
    SERIAL_TAG,
    WEEKLY_PARTITION_TAG,
    daily_partitions,
    default_schedule_status,
)

FULL_GRIDS_TAG = "lens/full_grids"
DATA_SOURCE_TAG = "lens/data_source"


@dataclass(frozen=True)
class Row:
    schedule: str
    job: str
    cron: str
    kind: str  # weekly | daily | sunday | lvm
    priority: int
    serial: str
    what: str


SCHEDULE_TABLE: tuple[Row, ...] = (
    Row(
        "weekly_lens_schedule",
        "weekly_lens_job",
        "0 2 * * 0",
        "weekly",
        100,
        SERIAL_NIGHTLY,
        "weekly Lens run, full grids, publish on green",
    ),
    Row(
        "hero_monitoring_schedule",
        "hero_monitoring_job",
        "0 2 * * *",
        "daily",
        90,
        SERIAL_NIGHTLY,
        "hero monitoring vs baseline",
    ),
    Row(
        "micro_suite_refresh_schedule",
        "micro_suite_refresh_job",
        "15 2 * * *",
        "daily",
        85,
        SERIAL_NIGHTLY,
        "micro-suite refresh (>= 800 / suite, stratified, seeded by date)",
    ),
    Row(
        "parquet_regeneration_schedule",
        "parquet_regeneration_job",
        "30 2 * * *",
        "daily",
        80,
        SERIAL_NIGHTLY,
        "Parquet regeneration (byte-identical agg/hits)",
    ),
    Row("ci_whiskers_schedule", "ci_whiskers_job", "45 2 * * *", "daily", 75, SERIAL_NIGHTLY, "CI whiskers PNG"),
    Row(
        "drift_pack_schedule",
        "drift_pack_job",
        "0 3 * * 0",
        "sunday",
        70,
        SERIAL_NIGHTLY,
        "drift pack (ECE, adaptive/debiased ECE, Brier, clamp rate, merged-bin share + trends)",
    ),
    Row(
        "calibrator_parity_schedule",
        "calibrator_parity_job",
        "0 4 * * 0",
        "sunday",
        65,
        SERIAL_NIGHTLY,
        "calibrator parity suite",
    ),
    Row(
        "pool_audit_schedule",
        "pool_audit_job",
        "0 5 * * 0",
        "sunday",
        60,
        SERIAL_NIGHTLY,
        "pool audit diff vs previous week",
    ),
    Row(
        "tripwires_schedule",
        "tripwires_job",
        "0 6 * * 0",
        "sunday",
        55,
        SERIAL_NIGHTLY,
        "tripwires (file_credit > 5%, flatline)",
    ),
    Row(
        "lvm_drift_check_schedule",
        "lvm_drift_check_job",
        "0 6 * * 1",
        "lvm",
        50,
        SERIAL_LVM,
        "LVM drift check (the lvm group's checks on the stored eval)",
    ),
    Row(
        "lvm_lane_health_schedule",
        "lvm_lane_health_job",
        "0 7 * * *",
        "lvm",
        45,
        SERIAL_LVM,
        "LVM lane health and regression suite (held-out eval + champion + their checks)",
    ),
)
ROWS = {r.schedule: r for r in SCHEDULE_TABLE}


def _tags(row: Row) -> dict[str, str]:
    return {SERIAL_TAG: row.serial, PRIORITY_TAG: str(row.priority), "lens/schedule_row": row.schedule}


def _asset_job(row: Row, selection, partitions_def=None, description: str = "") -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        row.job,
        selection=selection,
        partitions_def=partitions_def,
        tags=_tags(row),
        description=description or row.what,
    )


_LVM = dg.AssetSelection.groups("lvm")

JOBS = [
    _asset_job(ROWS["hero_monitoring_schedule"], [A.hero_monitor], daily_partitions),
    _asset_job(ROWS["micro_suite_refresh_schedule"], [A.micro_suites], daily_partitions),
    _asset_job(ROWS["parquet_regeneration_schedule"], [A.parquet_regeneration], daily_partitions),
    _asset_job(ROWS["ci_whiskers_schedule"], [A.ci_whiskers], daily_partitions),
    _asset_job(ROWS["drift_pack_schedule"], [A.drift_pack], weekly_partitions),
    _asset_job(ROWS["calibrator_parity_schedule"], [A.calibrator_parity], weekly_partitions),
    _asset_job(ROWS["pool_audit_schedule"], [A.pool_audit], weekly_partitions),
    _asset_job(ROWS["tripwires_schedule"], [A.tripwires], weekly_partitions),
    # Checks only: every asset check of the lvm group, evaluated on the stored eval / champion.
    _asset_job(
        ROWS["lvm_drift_check_schedule"],
        _LVM - _LVM.without_checks(),
        description="LVM drift check: the lvm group's asset checks (Hit@5 drift vs champion, lane "
        "health, p95, NaN/Inf, leakage) re-evaluated on the stored outputs.",
    ),
    # The group's sink (champion) and what feeds it directly (held-out eval), with their checks;
    # the variant-partitioned checkpoints are not retrained by this job.
    _asset_job(
        ROWS["lvm_lane_health_schedule"],
        _LVM.sinks().upstream(depth=1),
        description="LVM lane health and regression suite: held-out eval of the stored checkpoints, "
        "champion decision, and their checks.",
    ),
]


def tick_time(context: dg.ScheduleEvaluationContext):
    t = context.scheduled_execution_time
    if t is None:
        from datetime import datetime, timezone

        t = datetime.now(timezone.utc)
    return t


def run_request_for(row: Row, tick) -> dg.RunRequest:
    """The run a tick of `row` launches (pure function of the tick: idempotent run key)."""
    tags = _tags(row)
    if row.kind == "weekly":
        pk = weekly_partition_for(tick)
        src = data_source()
        tags.update(
            {
                DATA_SOURCE_TAG: src,
                FULL_GRIDS_TAG: "1",
                WEEKLY_PARTITION_TAG: pk,
                "lens/env": "prod" if src == "prod" else load_config().run.env,
            }
        )
        return dg.RunRequest(
            run_key=f"{row.job}:{pk}",
            partition_key=pk,
            tags=tags,
            run_config={"resources": {"lens_source": {"config": {"source": src}}}},
        )
    if row.kind == "daily":
        day = local_date(tick)
        tags[WEEKLY_PARTITION_TAG] = weekly_partition_for(tick)
        return dg.RunRequest(run_key=f"{row.job}:{day}", partition_key=day, tags=tags)
    if row.kind == "sunday":
        pk = weekly_partition_for(tick)
        tags[WEEKLY_PARTITION_TAG] = pk
        return dg.RunRequest(run_key=f"{row.job}:{pk}", partition_key=pk, tags=tags)
    if row.kind == "lvm":
        tags[LVM_PROFILE_TAG] = "full"  # the LVM's full profile (issue 21): whole corpus, context 100/500
        return dg.RunRequest(run_key=f"{row.job}:{local_date(tick)}", tags=tags)
    raise ValueError(f"schedule row {row.schedule}: unknown kind {row.kind!r}")


def _schedule(row: Row) -> dg.ScheduleDefinition:
    def execution_fn(context: dg.ScheduleEvaluationContext):
        return run_request_for(row, tick_time(context))

    return dg.ScheduleDefinition(
        name=row.schedule,
        cron_schedule=row.cron,
        job_name=row.job,
        execution_timezone=TZ,
        execution_fn=execution_fn,
        default_status=default_schedule_status(),
        description=f"{row.what}. Partition rule: {row.kind}; run key `{row.job}:<"
        f"{'date' if row.kind in ('daily', 'lvm') else 'weekly partition'}>`.",
    )


SCHEDULES = [_schedule(r) for r in SCHEDULE_TABLE]


def schedule_table_markdown() -> str:
    rule = {
        "weekly": "that Sunday (`YYYY-MM-DD`)",
        "daily": "tick date; reads latest weekly partition <= tick",
        "sunday": "that Sunday's weekly partition",
        "lvm": "unpartitioned",
    }
    lines = [
        "| schedule | job | cron (US/Eastern) | partition | run key | priority | serial lane | what |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in SCHEDULE_TABLE:
        key = f"`{r.job}:<{'date' if r.kind in ('daily', 'lvm') else 'partition'}>`"
        lines.append(
            f"| {r.schedule} | {r.job} | `{r.cron}` | {rule[r.kind]} | {key} | {r.priority} | "
            f"`{SERIAL_TAG}={r.serial}` | {r.what} |"
        )
    return "\n".join(lines)
