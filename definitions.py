"""The code location: every domain's definitions merged into one (dagster-open-platform style).

`dagster dev -w workspace.yaml` (or `make ui`) loads this file.
"""

from __future__ import annotations

import dagster as dg

import lens_assets
import lvm_assets
from lens_assets import paging_sensor

defs = dg.Definitions.merge(lens_assets.defs, lvm_assets.defs, paging_sensor.defs)
