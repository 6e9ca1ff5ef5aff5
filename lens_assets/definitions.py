from __future__ import annotations

from pathlib import Path

import dagster as dg

from dbt_like_checks import build_dbt_like_checks
from lens_assets.assets import lens_assets
from lens_assets.collection import STEP_IO
from lens_assets.common import weekly_partitions
from lens_assets.decisions import decision_assets
from lens_assets.engine_assets import engine_assets
from lens_assets.gates import gate_checks, gate_summary
from lens_assets.release import release_bundle
from lens_assets.verdict import release_verdict
from lens_core.measures.registry import check_config as check_measures
from resources.data_source import LensDataSource
from resources.io_manager import ParquetIOManager, StepHandoverIOManager, staging_table_path
from resources.launch import lens_step_executor
from resources.paging import DEFAULT_PAGER

# the measures the config names (`measures:`, every promotion `metric:`) resolve through the registry
# when the code location loads: a bad name is refused before any run (issue 19)
check_measures()

DBT_TABLES = ("agg", "hits", "pool", "qrels", "per_query", "scores")


def _table_path(table: str, partition_key: str | None) -> Path:
    return Path(staging_table_path(table, partition_key).path)


dbt_checks = build_dbt_like_checks(
    {t: dg.AssetKey(t) for t in DBT_TABLES}, _table_path, partitions_def=weekly_partitions
)

weekly_lens_job = dg.define_asset_job(
    "weekly_lens_job",
    selection=dg.AssetSelection.groups("lens", "engine"),
    partitions_def=weekly_partitions,
    executor_def=lens_step_executor,  # one process per step (issue 22)
    description="The weekly Lens run: collect -> judge -> score -> compare -> calibrate -> gate -> attest -> "
    "publish on green -> the week's verdict (release_verdict).",
)

defs = dg.Definitions(
    assets=[*engine_assets, *lens_assets, *decision_assets, gate_summary, release_bundle, release_verdict],
    asset_checks=gate_checks + dbt_checks,
    jobs=[weekly_lens_job],
    resources={
        "lens_source": LensDataSource(),
        "io_manager": ParquetIOManager(),
        # the per-system steps' small hand-overs (issue 22), in the data dir (and its bucket)
        STEP_IO: StepHandoverIOManager(),
        "pager": DEFAULT_PAGER,
    },
)
