"""SPEC §13 schedules, sensors and the monitoring jobs (issue 6).

`defs` holds the nightly/Sunday/LVM jobs and their schedules, the monitoring assets (group
`monitoring`), the continuous monitors (hero health schedule, gate monitor and emergency
tripwire sensors) and the `pager` resource (resources.paging.PagerResource when present,
else a file pager). The root `definitions.py` merges it with the other domains. The schedule
of the existing `weekly_lens_job` (lens_assets) is defined here by job name.
See schedules/README.md for the table of what runs when and the DST behaviour.
"""

from __future__ import annotations

import dagster as dg

from schedules.assets import MONITORING_ASSETS
from schedules.common import default_pager
from schedules.freshness import apply_freshness
from schedules.jobs import JOBS, SCHEDULE_TABLE, SCHEDULES, schedule_table_markdown
from schedules.monitors import CONTINUOUS_SCHEDULES, SENSORS

defs = dg.Definitions(
    assets=MONITORING_ASSETS,
    jobs=JOBS,
    schedules=SCHEDULES + CONTINUOUS_SCHEDULES,
    sensors=SENSORS,
    resources={"pager": default_pager()},
)

__all__ = ["defs", "apply_freshness", "SCHEDULE_TABLE", "schedule_table_markdown"]
