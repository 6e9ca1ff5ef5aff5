"""The code location: every domain's definitions merged into one (dagster-open-platform style).

`dagster dev -w workspace.yaml` (or `make ui`) loads this file. Each domain folder exposes its
own `defs`; the published assets get their weekly freshness policy here.
"""

from __future__ import annotations

import dagster as dg

import lens_assets
import lvm_assets
import schedules
from lens_assets import paging_sensor
from schedules.freshness import apply_freshness

defs = apply_freshness(dg.Definitions.merge(lens_assets.defs, lvm_assets.defs, paging_sensor.defs, schedules.defs))
