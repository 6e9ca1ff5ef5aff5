"""What the lens domain's asset modules share: group, owners (from config), the weekly
partitions (from the calendar), the systems of a run and the per-partition locations."""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from lens_core.common.calendar import PARTITION_START, TZ, WEEKLY_HOUR
from lens_core.common.settings import data_dir, full_grids, owners
from lens_core.common.systems import all_systems

GROUP = "lens"
OWNERS_EVAL = owners("eval")
OWNERS_CORE = owners("core")
OWNERS_CAL = owners("calibration")
FULL_GRIDS_TAG = "lens/full_grids"

# Checks partitioned by week (their evaluations carry the partition, issue 23) are a Dagster preview
# feature in 1.13: opted into knowingly, without its warning on every import of the code location.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

weekly_partitions = dg.WeeklyPartitionsDefinition(
    start_date=PARTITION_START, timezone=TZ, day_offset=0, hour_offset=WEEKLY_HOUR, end_offset=1
)


def run_id_for(partition_key: str) -> str:
    return f"w{partition_key}"


def current_systems(context=None):
    """The systems of this run: the demo subset, or the full SPEC §8 grids when LENS_FULL_GRIDS=1
    or the run carries the tag `lens/full_grids=1` (the weekly schedule sets it). Every step of a
    run reads the same tag, so they agree."""
    tagged = context is not None and context.run.tags.get(FULL_GRIDS_TAG) == "1"
    return all_systems(full_grid=full_grids() or tagged)


def calibration_dir(partition_key: str) -> Path:
    return data_dir() / "staging" / "calibration_files" / partition_key
