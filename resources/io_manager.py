"""A small Parquet IO manager for polars DataFrames (dagster-polars does not load Parquet under
polars 2.x, so the project carries its own `UPathIOManager`).

Tables land at `<base_dir>/<asset key path>/<partition key>.parquet` (default base_dir:
`$LENS_DATA_DIR/staging`). Outputs whose asset name has a contract in `lens_core.common.contracts`
go through the schema guard: a drifted table is refused and nothing is written.

With `LENS_DATA_DIR=s3://bucket/prefix` the base dir is the local working copy and the bucket is
the system of record (`lens_core.common.objectstore`): a table written here is uploaded whole to
`<prefix>/staging/...` (its sha256 recorded with it) before the step's output counts as written,
and a table read here that is absent locally, or differs from the object, is first copied from
the bucket (checked against that sha256): a step on another worker finds its inputs.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import dagster as dg
import polars as pl
from upath import UPath

from lens_core.common import contracts, objectstore
from lens_core.common.hashing import atomic_path, atomic_write_json, sha256_file
from lens_core.common.memory import release_memory
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

_released_before: list[str | None] = [None]  # the step (run id, step key) memory was last released for


def release_before_step(context: dg.InputContext) -> None:
    """Once per step, as it loads its first input: hand what the steps before it freed back to
    the operating system (`lens_core.common.memory`), so that in one process (the in-process
    executor) a step's peak RSS is its own need, not that plus what earlier steps left cached."""
    try:
        step = context.step_context
        key = f"{step.run_id}/{step.step.key}"
    except Exception:  # an input context outside a run (tests, `build_input_context`)
        return
    if _released_before[0] != key:
        _released_before[0] = key
        release_memory()


def staging_table_path(asset_name: str, partition_key: str | None, base_dir: str | None = None) -> UPath:
    """Where the IO manager keeps one partition of a table. With an s3:// data dir the local copy
    is first brought up to date from the bucket (when the bucket has the table)."""
    base = UPath(base_dir) if base_dir else UPath(data_dir() / "staging")
    path = base / asset_name / f"{partition_key or '__unpartitioned__'}.parquet"
    objectstore.sync_file(os.fspath(path))
    return path


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
            objectstore.commit_file(os.fspath(path), obj.sha256)
            context.add_output_metadata({"sha256": obj.sha256})
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a polars DataFrame or a ParquetFile, "
                f"got {type(obj).__name__}"
            )
        name = context.asset_key.path[-1]
        info = write_parquet(obj, path, schema=TABLE_SCHEMAS.get(name), name=name, keep_extra=name in KEEP_EXTRA)
        objectstore.commit_file(os.fspath(path), info["sha256"])
        context.add_output_metadata({"sha256": info["sha256"]})

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pl.DataFrame:
        release_before_step(context)
        objectstore.sync_file(os.fspath(path))
        if _wants_lazy(context):  # issue 22: a step that reads one system at a time scans the file
            if not os.path.isfile(os.fspath(path)):
                raise FileNotFoundError(f"{path}: no such table")
            return pl.scan_parquet(os.fspath(path))
        return read_parquet(path)


def _wants_lazy(context: dg.InputContext) -> bool:
    """The input is annotated `pl.LazyFrame` (as dagster-polars does): the step gets a scan, not
    the table, so its memory follows what it collects (one system's rows), not the file."""
    t = getattr(context.dagster_type, "typing_type", None)
    return t is pl.LazyFrame


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Configurable factory: `base_dir` empty means `$LENS_DATA_DIR/staging` at run time."""

    base_dir: str = ""

    def create_io_manager(self, context) -> PolarsParquetIOManager:
        base = self.base_dir or str(data_dir() / "staging")
        return PolarsParquetIOManager(base_path=UPath(base))


class StepHandoverIOManager(dg.ConfigurableIOManager):
    """The small hand-overs between the ops of a fanned-out asset (issue 22: the systems of a
    collection step, the paths of a system's ingested parts): JSON under
    `$LENS_DATA_DIR/staging/.steps/<run_id>/<step>/<output>[.<mapping key>].json`, written
    atomically and, with an `s3://` data dir, committed to the bucket, so a step on another
    worker or host reads what the step before it handed over."""

    def _path(self, ctx: dg.OutputContext) -> str:
        parts = ctx.get_identifier()  # run id, step key, output name[, mapping key]
        run_id, step, name = parts[0], parts[1], parts[2]
        extra = f".{parts[3]}" if len(parts) > 3 else ""
        return os.path.join(data_dir(), "staging", ".steps", run_id, step, f"{name}{extra}.json")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, obj)
        objectstore.commit_file(path, sha256_file(path))

    def load_input(self, context: dg.InputContext) -> Any:
        release_before_step(context)
        path = self._path(context.upstream_output)
        objectstore.sync_file(path)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
