from __future__ import annotations

import dagster as dg

from lens_assets.assets import lens_assets, weekly_partitions
from resources.data_source import LensDataSource
from resources.io_manager import ParquetIOManager

weekly_lens_job = dg.define_asset_job(
    "weekly_lens_job",
    selection=dg.AssetSelection.groups("lens"),
    partitions_def=weekly_partitions,
    description="The weekly Lens run: collect -> judge -> score -> attest -> publish on green.",
)

defs = dg.Definitions(
    assets=lens_assets,
    jobs=[weekly_lens_job],
    resources={"lens_source": LensDataSource(), "io_manager": ParquetIOManager()},
)
