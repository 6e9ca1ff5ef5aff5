"""Parquet I/O with the schema guard (SPEC §3): atomic, zstd, refuses drifted columns."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lens_core.common.hashing import atomic_path, sha256_file


class SchemaError(ValueError):
    """A table or raw record does not match its contract. The message names the place."""


@dataclass(frozen=True)
class ParquetFile:
    """A table already written as Parquet by a streaming writer (`ingest.ingest_to_parquet`),
    under the contract's schema and `parquet_options`: an asset returns it and the IO manager
    moves the file into place instead of writing a DataFrame (no second encode of millions of
    rows). The file at `path` is the writer's to hand over: whoever adopts it moves it."""

    path: Path
    sha256: str
    rows: int


def conform(table: pa.Table | pl.DataFrame, schema: pa.Schema, name: str, keep_extra: bool = False) -> pa.Table:
    """Select and cast `table` to `schema`, refusing missing columns or unsafe type changes.

    Extra columns are dropped (or kept after the contract's columns with `keep_extra`). A column whose values cannot be represented in the contract's
    type (e.g. strings in a numeric column) is refused with the column named.
    """
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{name}: required column(s) missing: {', '.join(missing)}")
    cols = []
    for f in schema:
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = _cast(col, f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(f"{name}: column {f.name!r} has type {col.type}, expected {f.type} ({e})") from None
        cols.append(col)
    out = pa.Table.from_arrays(cols, schema=schema)
    if keep_extra:
        for c in table.column_names:
            if c not in schema.names:
                out = out.append_column(c, table.column(c))
    return out


def _cast(col: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """`col.cast(to, safe=True)`; polars' 64-bit-offset strings to the contract's 32-bit ones
    without it: Arrow's cast imports pyarrow.compute (~50-70 ms of `lens-eval score`, issue 19
    speed), and this narrowing only rewrites each chunk's offsets."""
    if not (pa.types.is_large_string(col.type) and to == pa.string()):
        return col.cast(to, safe=True)
    chunks = []
    for c in col.chunks:
        validity, offsets, data = c.buffers()
        if offsets is None:  # a layout without offsets (an empty array): Arrow's own cast
            return col.cast(to, safe=True)
        off = np.frombuffer(offsets, dtype=np.int64)[: c.offset + len(c) + 1]
        if off.size and off[-1] > np.iinfo(np.int32).max:  # 2 GiB of text in one chunk: Arrow says so
            return col.cast(to, safe=True)
        off32 = pa.py_buffer(off.astype(np.int32))
        chunks.append(pa.Array.from_buffers(pa.string(), len(c), [validity, off32, data], c.null_count, c.offset))
    return pa.chunked_array(chunks, type=pa.string())


def write_parquet(
    table: pa.Table | pl.DataFrame,
    path: str | os.PathLike,
    schema: pa.Schema | None = None,
    name: str | None = None,
    keep_extra: bool = False,
) -> dict:
    """Write a table atomically (temp file, then rename) and return {path, sha256, rows}.

    With a `schema`, the schema guard runs first: nothing is written when it refuses.
    """
    path = Path(path)
    if schema is not None:
        table = conform(table, schema, name or path.name, keep_extra=keep_extra)
    elif isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, **parquet_options(table.schema))
    return {"path": str(path), "sha256": sha256_file(path), "rows": table.num_rows}


def parquet_options(schema: pa.Schema) -> dict:
    """The writer options of every table the product writes (`write_parquet`, and the
    streaming writer of `lens_core.ingest.ndjson.ingest_to_parquet`, which must write the same bytes).

    Floating-point columns of flat tables are not dictionary-encoded: their values rarely repeat, so
    the dictionary pyarrow would try first is a hash table per value that ends up discarded
    (4.9 M hit scores: 0.37 s -> 0.24 s, and the file is 3% smaller). Tables with nested
    columns keep pyarrow's default (its column list names leaves, not top-level fields)."""
    flat = not any(pa.types.is_nested(f.type) for f in schema)
    dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)] if flat else True
    # Row-group statistics for every column but free-text strings: a string column's min/max
    # compares every value (4.9 M hit paths, repos and qids: ~0.1 s of the hits encode) and
    # no reader prunes on those. The run keys keep theirs: `lens-eval score` lists a file's
    # (run_id, system) pairs from them.
    stats = [f.name for f in schema if not _is_text(f.type) or f.name in STATS_TEXT_COLUMNS] if flat else True
    # Floating-point columns BYTE_STREAM_SPLIT: bytes of equal significance together compress
    # better (4.9 M hit scores: 35.8 -> 30.5 MB) and cost less CPU to compress.
    floats = [f.name for f in schema if pa.types.is_floating(f.type)] if flat else False
    return {
        "compression": "zstd",
        "write_statistics": stats,
        "use_dictionary": dictionary,
        "use_byte_stream_split": floats or False,
    }


# String columns whose row-group statistics are written (see `parquet_options`).
STATS_TEXT_COLUMNS = ("run_id", "system")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def read_parquet(path: str | os.PathLike, schema: pa.Schema | None = None) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table")
    table = pq.read_table(path)
    if schema is not None:
        table = conform(table, schema, str(path))
    return pl.from_arrow(table)


def merge_parquet(parts: list[Path], path: str | os.PathLike, schema: pa.Schema) -> ParquetFile:
    """Parquet files written under `schema` (one system each) as one file at `path`, in the order
    given, one part in memory at a time (issue 22: memory bounded by the largest system), with the
    product's writer options, atomically; each part's rows keep their row groups' boundaries, so a
    reader that filters one system reads only its row groups."""

    def tables():
        for part in parts:
            yield os.fspath(part), pq.read_table(part)  # its own schema: conform refuses a drifted part

    return write_parquet_parts(tables(), path, schema)


def write_parquet_parts(
    tables: Iterable[tuple[str, pa.Table | pl.DataFrame]], path: str | os.PathLike, schema: pa.Schema
) -> ParquetFile:
    """(name, table) parts written in order as one Parquet file at `path` under `schema`, one
    part in memory at a time, with the product's writer options, atomically (nothing at `path`
    unless every part conformed). `name` names a part in a refusal."""
    rows = 0
    with atomic_path(path, suffix=".parquet") as tmp:
        writer = pq.ParquetWriter(tmp, schema, **parquet_options(schema))
        try:
            for name, t in tables:
                t = conform(t, schema, name)
                writer.write_table(t)
                rows += t.num_rows
                del t
        finally:
            writer.close()
    return ParquetFile(Path(path), sha256_file(path), rows)
