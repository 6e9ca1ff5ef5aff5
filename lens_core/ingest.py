"""Ingestion: raw-run NDJSON files -> `agg` and `hits` tables (SPEC §3), with the schema guard.

Fast path: pyarrow's JSON reader parses each file against the contract's explicit schema and
the derived columns are computed with polars, no per-row Python. When the fast path rejects
a file (a line that is not JSON, a wrong type), a line-by-line validator re-reads it to name
the exact line and field. Any error stops ingestion before anything is written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import polars as pl
import pyarrow as pa
import pyarrow.json as paj

from lens_core.contracts import (
    AGG_SCHEMA, COST_FIELD_TYPES, HIT_FIELD_TYPES, HITS_SCHEMA, RAW_FIELD_TYPES, RAW_PRESENT,
    RAW_RECORD_SCHEMA, RAW_REQUIRED, RAW_TRAILER_TYPE, SHARD_FIELD_TYPES, SHARD_STATUSES,
    WHY_REASONS,
)
from lens_core.hashing import sha256_hex
from lens_core.tables import SchemaError, conform

_HIT_REQUIRED = ("rank", "repo", "path", "start_line", "end_line", "score", "why")
_SHARD_REQUIRED = ("shard", "probe_id", "issued_ts", "status")


def _fail(path: Path, line: int | None, field: str | None, msg: str) -> SchemaError:
    where = f"{path}" + (f":{line}" if line is not None else "")
    what = f" field {field!r}:" if field else ""
    return SchemaError(f"{where}:{what} {msg}")


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_obj(path: Path, lineno: int, obj: dict, types: dict[str, tuple[type, ...]],
               required: Iterable[str], prefix: str) -> None:
    for f in required:
        if f not in obj:
            raise _fail(path, lineno, prefix + f, "missing")
    for f, want in types.items():
        if f not in obj:
            continue
        v = obj[f]
        ok = isinstance(v, want) and not (isinstance(v, bool) and bool not in want)
        if not ok:
            raise _fail(path, lineno, prefix + f, f"expected {_type_name(want)}, got {type(v).__name__} ({v!r:.40})")


def validate_lines(path: Path, body: bytes) -> None:
    """Slow, exact validator: raises SchemaError naming file, line and field of the first
    problem. Used to explain a file the fast path rejected."""
    for lineno, raw in enumerate(body.split(b"\n"), start=1):
        if not raw.strip():
            raise _fail(path, lineno, None, "empty line")
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _fail(path, lineno, None, f"not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        if not isinstance(obj, dict):
            raise _fail(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}")
        _check_obj(path, lineno, obj, RAW_FIELD_TYPES, RAW_PRESENT, "")
        for f in RAW_REQUIRED:
            if obj[f] is None:
                raise _fail(path, lineno, f, "is null")
        for j, h in enumerate(obj["hits"]):
            if not isinstance(h, dict):
                raise _fail(path, lineno, f"hits[{j}]", "expected an object")
            _check_obj(path, lineno, h, HIT_FIELD_TYPES, _HIT_REQUIRED, f"hits[{j}].")
            bad = [w for w in h["why"] if w not in WHY_REASONS]
            if bad:
                raise _fail(path, lineno, f"hits[{j}].why", f"unknown reason(s) {bad}; allowed {list(WHY_REASONS)}")
        for j, s in enumerate(obj["shards"]):
            if not isinstance(s, dict):
                raise _fail(path, lineno, f"shards[{j}]", "expected an object")
            _check_obj(path, lineno, s, SHARD_FIELD_TYPES, _SHARD_REQUIRED, f"shards[{j}].")
            if s["status"] not in SHARD_STATUSES:
                raise _fail(path, lineno, f"shards[{j}].status", f"{s['status']!r} not in {list(SHARD_STATUSES)}")
        _check_obj(path, lineno, obj["cost"], COST_FIELD_TYPES, tuple(COST_FIELD_TYPES), "cost.")


def _split_trailer(path: Path, data: bytes) -> tuple[bytes, int]:
    """Return (body, declared record count); refuse a file without its done trailer."""
    stripped = data.rstrip(b"\n")
    if not stripped:
        raise _fail(path, 1, None, "empty file: stream ended without a done line")
    cut = stripped.rfind(b"\n")
    last = stripped[cut + 1:]
    n_lines = stripped.count(b"\n") + 1
    try:
        trailer = json.loads(last)
    except json.JSONDecodeError:
        trailer = None
    if not (isinstance(trailer, dict) and trailer.get("type") == RAW_TRAILER_TYPE):
        raise _fail(path, n_lines, None, "stream ended without a done line (truncated run file)")
    declared = trailer.get("records")
    if not isinstance(declared, int):
        raise _fail(path, n_lines, "records", "done line lacks an integer record count")
    return (stripped[:cut] if cut >= 0 else b""), declared


def _first_index(mask: pl.Series) -> int:
    return int(mask.arg_true()[0])


def parse_raw_run(path: str | Path) -> tuple[pl.DataFrame, str]:
    """Parse and validate one raw-run file -> (records as a DataFrame, sha256 of the file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _fail(path, None, None, f"cannot read ({e.strerror})") from None
    sha = sha256_hex(data)
    body, declared = _split_trailer(path, data)
    if not body:
        table = RAW_RECORD_SCHEMA.empty_table()
    else:
        if b"\n\n" in body or body.startswith(b"\n"):
            validate_lines(path, body)  # names the empty line
        try:
            table = paj.read_json(
                io.BytesIO(body),
                read_options=paj.ReadOptions(block_size=1 << 24),
                parse_options=paj.ParseOptions(explicit_schema=RAW_RECORD_SCHEMA,
                                               unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            validate_lines(path, body)
            raise _fail(path, None, None, f"unreadable raw run ({e})") from None
    if table.num_rows != declared:
        raise _fail(path, table.num_rows + 1, "records",
                    f"done line declares {declared} records, file has {table.num_rows}")
    # Nullable fields (lat_ms, error) must still be present: with an explicit schema a missing
    # key parses as null, so count the key's occurrences (a key inside a JSON string is escaped
    # and cannot match) and let the exact validator name the line when the count is off.
    for f in (x for x in RAW_PRESENT if x not in RAW_REQUIRED):
        if body and body.count(b'"' + f.encode() + b'":') != table.num_rows:
            validate_lines(path, body)
    df = pl.from_arrow(table)
    # Missing fields parse as null with an explicit schema: locate the first one exactly.
    for f in RAW_REQUIRED:
        nulls = df[f].is_null()
        if nulls.any():
            validate_lines(path, body)
            raise _fail(path, _first_index(nulls) + 1, f, "missing or null")
    row = pl.int_range(0, pl.len()).alias("_row")
    hits = df.select(row, "hits").explode("hits").drop_nulls("hits").unnest("hits")
    for f in _HIT_REQUIRED:
        if hits[f].null_count():
            validate_lines(path, body)
            bad = hits.filter(pl.col(f).is_null())["_row"][0]
            raise _fail(path, int(bad) + 1, f"hits[].{f}", "missing or null")
    if hits.height:
        whys = hits.select("_row", "why").explode("why")
        bad = whys.filter(~pl.col("why").is_in(list(WHY_REASONS)))
        if bad.height:
            raise _fail(path, int(bad["_row"][0]) + 1, "hits[].why",
                        f"unknown reason {bad['why'][0]!r}; allowed {list(WHY_REASONS)}")
    shards = df.select(row, "shards").explode("shards").drop_nulls("shards").unnest("shards")
    for f in _SHARD_REQUIRED:
        if shards[f].null_count():
            validate_lines(path, body)
            bad = shards.filter(pl.col(f).is_null())["_row"][0]
            raise _fail(path, int(bad) + 1, f"shards[].{f}", "missing or null")
    bad = shards.filter(~pl.col("status").is_in(list(SHARD_STATUSES)))
    if bad.height:
        raise _fail(path, int(bad["_row"][0]) + 1, "shards[].status",
                    f"{bad['status'][0]!r} not in {list(SHARD_STATUSES)}")
    cost = df["cost"].struct.unnest()
    for f in COST_FIELD_TYPES:
        if cost[f].null_count():
            raise _fail(path, _first_index(cost[f].is_null()) + 1, f"cost.{f}", "missing or null")
    return df, sha


def records_to_tables(df: pl.DataFrame, sha: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Derive the agg and hits rows of one parsed raw-run file (vectorised)."""
    df = df.with_row_index("_row")
    shards = (
        df.select("_row", "req_ts", "shards").explode("shards").drop_nulls("shards").unnest("shards")
    )
    shard_stats = shards.group_by("_row").agg(
        pl.col("shard").n_unique().alias("shards_total"),
        pl.col("shard").filter(pl.col("status") == "timeout").n_unique().alias("shards_timed_out"),
        (pl.len() > pl.col("shard").n_unique()).alias("hedged"),
    )
    shard_done = (
        shards.filter(pl.col("status") == "ok")
        .group_by("_row", "shard")
        .agg((pl.col("done_ts") - pl.col("req_ts")).min().alias("_done_ms"))
    )
    hits = (
        df.select("_row", "run_id", "system", "qid", "sla_ms", "lat_ms", "error", "hits")
        .explode("hits").drop_nulls("hits").unnest("hits")
        .join(shard_done, on=["_row", "shard"], how="left")
        .with_columns(
            pl.col("why").list.contains("lex").alias("why_lex"),
            pl.col("why").list.contains("struct").alias("why_struct"),
            pl.col("why").list.contains("sem").alias("why_sem"),
            # SPEC §4: hits from shards or queries that finished after sla_ms are not returned.
            pl.when(pl.col("error").is_not_null() | pl.col("lat_ms").is_null()).then(False)
            .when(pl.col("lat_ms") > pl.col("sla_ms")).then(False)
            .when(pl.col("shard").is_null()).then(True)
            .otherwise((pl.col("_done_ms") <= pl.col("sla_ms")).fill_null(False))
            .alias("in_sla"),
        )
    )
    hit_stats = hits.group_by("_row").agg(
        pl.len().alias("n_hits"),
        pl.col("in_sla").sum().alias("n_hits_in_sla"),
        pl.col("why_lex").mean().alias("why_mix_lex"),
        pl.col("why_struct").mean().alias("why_mix_struct"),
        pl.col("why_sem").mean().alias("why_mix_sem"),
    )
    agg = (
        df.join(hit_stats, on="_row", how="left")
        .join(shard_stats, on="_row", how="left")
        .with_columns(
            pl.from_epoch(pl.col("req_ts").round(0).cast(pl.Int64), time_unit="ms")
            .dt.replace_time_zone("UTC").alias("req_ts"),
            ((pl.col("lat_ms") <= pl.col("sla_ms")) & pl.col("error").is_null()).fill_null(False).alias("within_sla"),
            pl.col("n_hits", "n_hits_in_sla", "shards_total", "shards_timed_out").fill_null(0),
            pl.col("hedged").fill_null(False),
            pl.col("why_mix_lex", "why_mix_struct", "why_mix_sem").fill_null(0.0),
            pl.col("cost").struct.field("probes").alias("probes"),
            pl.col("cost").struct.field("cpu_ms").alias("cpu_ms"),
            pl.lit(sha).alias("attestation_sha256"),
        )
        .sort("_row")
    )
    return agg.select([f.name for f in AGG_SCHEMA]), hits.sort(["_row", "rank"]).select([f.name for f in HITS_SCHEMA])


def ingest(paths: Iterable[str | Path]) -> tuple[pa.Table, pa.Table]:
    """Ingest raw-run files -> (agg, hits) Arrow tables conformed to the contract.

    Every file is validated before anything is returned, so a caller that writes only after
    this returns never leaves half an ingestion on disk. Duplicate (run_id, system, qid)
    rows across files are refused.
    """
    aggs, hitss = [], []
    for p in paths:
        df, sha = parse_raw_run(p)
        a, h = records_to_tables(df, sha)
        aggs.append(a)
        hitss.append(h)
    if not aggs:
        raise SchemaError("no raw-run files to ingest")
    agg = pl.concat(aggs, how="vertical_relaxed")
    hits = pl.concat(hitss, how="vertical_relaxed")
    dup = agg.group_by("run_id", "system", "qid").len().filter(pl.col("len") > 1)
    if dup.height:
        r = dup.row(0, named=True)
        raise SchemaError(f"duplicate record for run_id={r['run_id']} system={r['system']} qid={r['qid']}")
    return conform(agg, AGG_SCHEMA, "agg"), conform(hits, HITS_SCHEMA, "hits")
