"""A small Parquet IO manager for polars DataFrames (dagster-polars does not load Parquet under
polars 2.x, so the project carries its own `UPathIOManager`).

Tables land at `<base_dir>/<asset key path>/<partition key>.parquet` (default base_dir:
`$LENS_DATA_DIR/staging`). Outputs whose asset name has a contract in `lens_core.common.contracts`
go through the schema guard: a drifted table is refused and nothing is written.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import dagster as dg
import polars as pl
from upath import UPath

from lens_core.common import contracts
from lens_core.common.hashing import atomic_path
from lens_core.common.settings import data_dir
from lens_core.common.tables import ParquetFile, read_parquet, write_parquet

TABLE_SCHEMAS = {
    "agg": contracts.AGG_SCHEMA,
    "hits": contracts.HITS_SCHEMA,
    "pool": contracts.POOL_SCHEMA,
    "qrels": contracts.QRELS_SCHEMA,
    "query_suites": contracts.QUERIES_SCHEMA,
    "ground_truth": contracts.GROUND_TRUTH_SCHEMA,
    "scores": contracts.SCORES_SCHEMA,
    "per_query": contracts.PER_QUERY_SCHEMA,
    "comparisons": contracts.COMPARISONS_SCHEMA,
}
# Tables whose contract is a prefix: diagnostics follow the contract's columns.
KEEP_EXTRA = {"per_query", "comparisons"}


def staging_table_path(asset_name: str, partition_key: str | None, base_dir: str | None = None) -> UPath:
    """Where the IO manager keeps one partition of a table."""
    base = UPath(base_dir) if base_dir else UPath(data_dir() / "staging")
    return base / asset_name / f"{partition_key or '__unpartitioned__'}.parquet"


def adopt_parquet(written: ParquetFile, path: UPath) -> None:
    """Move a table a streaming writer already wrote into the IO manager's place for it:
    a rename on the same file system, else a copy into a temporary file beside the target that
    is renamed over it; readers see the old file or the new one, never half of one."""
    target = os.fspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.replace(written.path, target)
    except OSError:  # another file system: copy, then rename beside the target
        with atomic_path(target, suffix=".parquet") as tmp:
            shutil.copyfile(written.path, tmp)
        os.unlink(written.path)


class PolarsParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if isinstance(obj, ParquetFile):
            adopt_parquet(obj, path)
            context.add_output_metadata({"sha256": obj.sha256})
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a polars DataFrame or a ParquetFile, "
                f"got {type(obj).__name__}"
            )
        name = context.asset_key.path[-1]
        info = write_parquet(obj, path, schema=TABLE_SCHEMAS.get(name), name=name, keep_extra=name in KEEP_EXTRA)
        context.add_output_metadata({"sha256": info["sha256"]})

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pl.DataFrame:
        return read_parquet(path)


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Configurable factory: `base_dir` empty means `$LENS_DATA_DIR/staging` at run time."""

    base_dir: str = ""

    def create_io_manager(self, context) -> PolarsParquetIOManager:
        base = self.base_dir or str(data_dir() / "staging")
        return PolarsParquetIOManager(base_path=UPath(base))
