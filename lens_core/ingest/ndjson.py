"""Ingestion: raw-run NDJSON files -> `agg` and `hits` tables (SPEC §3), with the schema guard.

Three paths, one contract, the same tables:

- C scanner (`_canonscan.c`, built by setup.py; optional). A raw run written by
  `lens_core.collect.rawruns.write_raw_run` has a fixed layout (compact JSON, the contract's keys in the
  contract's order). The scanner parses record lines of exactly that layout (`_canon_spec`,
  generated from the contract) into column buffers, validating every byte as it goes: strict
  JSON syntax, every key present once and in order, every value of the contract's JSON type,
  integers in int32, why reasons and shard statuses from their vocabularies, valid UTF-8. It
  accepts a subset of what the RE2 certification below accepts, and its numbers are Python's
  `float(token)` to the bit. The file is parsed in ranges, one thread per core (the GIL is
  released), while it is hashed at a lower priority beside them. At anything it does not
  accept, the scanner steps aside and nothing it parsed is used.
- Canonical DuckDB path, for a canonical file the scanner declines (or without the scanner).
  One RE2 regular expression generated from the contract (`_canonical_line_regex`) certifies
  every record line of the file: strict JSON syntax, every key present exactly once, every
  value of the contract's JSON type (integers are integer tokens, strings are strings, null
  only where the contract allows it), why reasons and shard statuses from their vocabularies,
  no blank line. Only then are DuckDB's typed values used: its JSON reader is lax (it would
  turn "150" into 150.0, 1.5 or true into an integer, a number into a string, and accepts
  trailing commas), so its values are trusted only for a file the regex has certified, where no
  such conversion can happen. DuckDB scans the file from its path in a thread while the file is
  streamed, through small reused buffers, once for its sha256 and once (in pieces, one thread
  each) through the regex (all of them release the GIL).
- Exact path, for everything else (another writer's layout, a wrong type, a missing key,
  anything neither fast path can vouch for): the file is read into memory and hashed beside the
  parse; pyarrow's JSON reader parses it against the contract's explicit schema; when it
  rejects a file, a line-by-line validator re-reads it to name the exact file, line and
  field. The fast paths never name errors; they only detect them and step aside.

On both fast paths the file's identity (inode, size, mtime) must be the same after the parse
and after the hash as when it was opened, so the values belong to the hashed bytes.

Every path then applies the validation contract (`lens_core.common.validate`, issue 18) to the
parsed columns in `_derive` (`_check_contract`: non-empty ids, ranks >= 1 and unique per record,
line spans, finite numbers), vectorised; a fast path that meets a violation steps aside like
for anything else, so the exact path names it and every tier gives the same verdict. Before the
exact path reads a file whole, `_check_text` checks it streaming (its done line from the tail;
no control byte, no line over `_MAX_LINE`): an absurd file is refused with bounded memory.

Nested hits are flattened with pyarrow compute and numpy, per-record columns with polars, no
per-row Python. Any error stops ingestion before anything is written.

Why this is one module: the three parsers (C scanner, DuckDB + RE2, exact) share one per-file state machine, the contract-derived specs and the derivation of agg/hits; every fast path must give the exact path's tables byte for byte, and keeping them in one module keeps that invariant checkable in one read.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import math
import os
import re
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj
import pyarrow.parquet as pq

from lens_core.collect.rawruns import RECORD_KEYS
from lens_core.common import objectstore
from lens_core.common.contracts import (
    AGG_SCHEMA,
    COST_FIELD_TYPES,
    COST_STRUCT,
    HIT_FIELD_TYPES,
    HIT_STRUCT,
    HITS_SCHEMA,
    RAW_FIELD_TYPES,
    RAW_PRESENT,
    RAW_RECORD_SCHEMA,
    RAW_REQUIRED,
    RAW_TRAILER_TYPE,
    SHARD_FIELD_TYPES,
    SHARD_STATUSES,
    SHARD_STRUCT,
    WHY_REASONS,
)
from lens_core.common.hashing import atomic_path, sha256_file, sha256_hex
from lens_core.common.tables import ParquetFile, SchemaError, conform, parquet_options, write_parquet
from lens_core.common.validate import (
    WHY_UNKNOWN,
    count_newlines,
    finite_rules,
    first_violation,
    id_rules,
    maybe_blank,
    prescan_lines,
    rank_rules,
    record_rules,
    shard_rules,
    some_hit_unflagged,
    span_rules,
    why_problem,
)

try:  # the C scanner of canonical lines (setup.py builds it; optional: the other paths give the same tables)
    from lens_core.ingest import _canonscan
except ImportError:  # pragma: no cover - built without a C compiler
    _canonscan = None

_HIT_REQUIRED = ("rank", "repo", "path", "start_line", "end_line", "score", "why")
_SHARD_REQUIRED = ("shard", "probe_id", "issued_ts", "status")


def _fail(path: Path, line: int | None, field: str | None, msg: str) -> SchemaError:
    where = f"{path}" + (f":{line}" if line is not None else "")
    what = f" field {field!r}:" if field else ""
    return SchemaError(f"{where}:{what} {msg}")


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_obj(
    path: Path, lineno: int, obj: dict, types: dict[str, tuple[type, ...]], required: Iterable[str], prefix: str
) -> None:
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
        if isinstance(v, float) and not math.isfinite(v):  # NaN, ±Infinity, or a number past a double (1e400)
            raise _fail(path, lineno, prefix + f, f"{f} {v} is not a finite number")
        if float not in want and isinstance(v, int) and not -(2**31) <= v < 2**31:  # the contract's integers are int32
            raise _fail(path, lineno, prefix + f, f"{f} {v} does not fit in 32 bits")


def _iter_lines(body: bytes | memoryview, step: int = 1 << 24) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of `body` split at newlines (as bytes.split would), one line at a
    time: no copy of the whole body (which can be gigabytes)."""
    mv = memoryview(body).cast("B")
    arr = np.frombuffer(mv, dtype=np.uint8)
    lineno, start = 1, 0
    for i in range(0, len(arr), step):
        for nl in np.flatnonzero(arr[i : i + step] == 0x0A):
            yield lineno, bytes(mv[start : i + int(nl)])
            lineno, start = lineno + 1, i + int(nl) + 1
    yield lineno, bytes(mv[start:])


def validate_lines(path: Path, body: bytes | memoryview) -> None:
    """Slow, exact validator: raises SchemaError naming file, line and field of the first
    problem. Used to explain a file the fast path rejected."""
    for lineno, raw in _iter_lines(body):
        if not raw.strip():
            raise _fail(path, lineno, None, "empty line")
        try:  # strict: json.loads(bytes) would let an encoded surrogate through ("surrogatepass")
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _fail(path, lineno, None, f"not UTF-8 (byte {e.start + 1} of the line: {e.reason})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise _fail(path, lineno, None, f"not JSON ({e.msg})") from None
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
            bad = why_problem(h["why"], WHY_REASONS)  # non-empty, or exactly ["unknown"] (issue 18)
            if bad:
                raise _fail(path, lineno, f"hits[{j}].why", bad)
        for j, s in enumerate(obj["shards"]):
            if not isinstance(s, dict):
                raise _fail(path, lineno, f"shards[{j}]", "expected an object")
            _check_obj(path, lineno, s, SHARD_FIELD_TYPES, _SHARD_REQUIRED, f"shards[{j}].")
            if s["status"] not in SHARD_STATUSES:
                raise _fail(path, lineno, f"shards[{j}].status", f"{s['status']!r} not in {list(SHARD_STATUSES)}")
        _check_obj(path, lineno, obj["cost"], COST_FIELD_TYPES, tuple(COST_FIELD_TYPES), "cost.")


def _last_line(buf: bytes) -> tuple[int, int]:
    """(cut, end) of the last line of `buf`, trailing newlines dropped: the line is
    buf[cut + 1:end]; cut is -1 when it is the only line, end is 0 when `buf` holds nothing else."""
    end = len(buf)
    while end and buf[end - 1] == 0x0A:  # trailing newlines only
        end -= 1
    return buf.rfind(b"\n", 0, end), end


def _done_line(line: bytes) -> tuple[bool, int | None]:
    """(whether `line` is the done trailer, its integer record count or None)."""
    try:
        trailer = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, None
    if not (isinstance(trailer, dict) and trailer.get("type") == RAW_TRAILER_TYPE):
        return False, None
    declared = trailer.get("records")
    return True, (declared if isinstance(declared, int) and not isinstance(declared, bool) else None)


def _split_trailer(path: Path, data: bytes) -> tuple[memoryview, int]:
    """Return (body, declared record count); refuse a file without its done trailer.

    The body is a view into `data` (no copy of a file that can be gigabytes)."""
    cut, end = _last_line(data)
    if not end:
        raise _fail(path, 1, None, "empty file: stream ended without a done line")
    is_done, declared = _done_line(data[cut + 1 : end])
    if not is_done:
        raise _fail(path, data.count(b"\n", 0, end) + 1, None, "stream ended without a done line (truncated run file)")
    if declared is None:
        raise _fail(path, data.count(b"\n", 0, end) + 1, "records", "done line lacks an integer record count")
    return memoryview(data)[: max(cut, 0)], declared


def _np(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow -> numpy through polars: pyarrow's own to_numpy (and pa.array) import pandas on
    first use, half a second of a fresh process that the fast path does not otherwise need."""
    return pl.from_arrow(a).to_numpy()


def _arrow(x: np.ndarray) -> pa.Array:
    """numpy -> Arrow through polars (see `_np`)."""
    return pl.Series(x).to_arrow()


def _first_index(mask: pl.Series) -> int:
    return int(mask.arg_true()[0])


class _Hasher(threading.Thread):
    """sha256 of the file's bytes, computed beside the parse (hashlib releases the GIL)."""

    def __init__(self, data: bytes):
        super().__init__(daemon=True)
        self.data, self.hexdigest = data, ""

    def run(self) -> None:
        self.hexdigest = sha256_hex(self.data)


def _count_newlines(body: memoryview, step: int = 1 << 24) -> int:
    """Newlines in `body`: numpy over 16 MB slices (a vector compare; bytes.count is ~4x slower)."""
    arr = np.frombuffer(body, dtype=np.uint8)
    return sum(int(np.count_nonzero(arr[i : i + step] == 0x0A)) for i in range(0, arr.size, step))


def _read_json(body: memoryview) -> pa.Table:
    return paj.read_json(
        pa.BufferReader(pa.py_buffer(body)),
        read_options=paj.ReadOptions(block_size=1 << 24),
        parse_options=paj.ParseOptions(explicit_schema=RAW_RECORD_SCHEMA, unexpected_field_behavior="ignore"),
    )


def _first_line(fd: int, limit: int = 1 << 24) -> bytes | None:
    """The first line of an open file with its newline (None when there is none within
    `limit` bytes), read with pread: the file position is left alone."""
    end = _line_start_after(fd, 0, limit)
    return None if end is None else os.pread(fd, end, 0)


def _locate_unreadable(body: memoryview, err: Exception) -> tuple[int, str]:
    """The line pyarrow's JSON reader cannot read, when the line validator accepts every line
    (pyarrow's own "in row N" counts from 0 within a block): bisection over line ranges, each
    half parsed alone (about two parses of the body in all). (1-based line, pyarrow's reason)."""
    arr = np.frombuffer(body, dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(arr == 0x0A) + 1))
    lo, hi = 0, len(starts)  # the bad line is in [lo, hi)
    why = re.sub(r"\s*in row \d+", "", str(err).splitlines()[0])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        end = int(starts[mid]) if mid < len(starts) else len(body)
        try:
            _read_json(body[int(starts[lo]) : end])
            lo = mid  # the first half reads: the bad line is in the second
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            hi, why = mid, re.sub(r"\s*in row \d+", "", str(e).splitlines()[0])
    return lo + 1, why


def _parse_exact(path: Path, data: bytes, body: memoryview, declared: int) -> pa.Table:
    """The exact path: pyarrow parses the body once against the contract's explicit schema;
    whatever it cannot accept is explained by `validate_lines` (file, line, field)."""
    if not body:
        table = RAW_RECORD_SCHEMA.empty_table()
    else:
        try:
            table = _read_json(body)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            validate_lines(path, body)
            line, why = _locate_unreadable(body, e)
            raise _fail(path, line, None, f"not readable against the contract ({why})") from None
        try:  # pyarrow's JSON reader keeps a string's bytes: invalid UTF-8 would get into Arrow strings
            table.validate(full=True)
        except pa.ArrowInvalid as e:
            validate_lines(path, body)  # names the line (Python's strict UTF-8 decoder)
            raise _fail(path, None, None, f"invalid string ({e})") from None
        # pyarrow skips blank lines: one record per line means exactly rows - 1 newlines
        # in the body; otherwise the exact validator names the blank line.
        if _count_newlines(body) != table.num_rows - 1:
            validate_lines(path, body)
    if table.num_rows != declared:
        raise _fail(
            path, table.num_rows + 1, "records", f"done line declares {declared} records, file has {table.num_rows}"
        )
    # Nullable fields (lat_ms, error) must still be present: with an explicit schema a
    # missing key parses as null. Only when a column has nulls, count the key's occurrences
    # (a key inside a JSON string is escaped and cannot match) and let the exact validator
    # name the line when the count is off.
    for f in (x for x in RAW_PRESENT if x not in RAW_REQUIRED):
        if (
            body
            and table.column(f).null_count
            and data.count(b'"' + f.encode() + b'":', 0, len(body)) != table.num_rows
        ):
            validate_lines(path, body)
    # Missing fields parse as null with an explicit schema: locate the first one exactly.
    for f in RAW_REQUIRED:
        col = table.column(f)
        if col.null_count:
            validate_lines(path, body)
            raise _fail(path, _first_index(pl.from_arrow(col.is_null())) + 1, f, "missing or null")
    return table


# ---------------------------------------------------------------------------------------------
# Canonical fast path: RE2 certifies the file's layout and JSON types, DuckDB parses it
# ---------------------------------------------------------------------------------------------
_JSON_STR = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_JSON_INT = r"-?(?:0|[1-9][0-9]*)"
_JSON_NUM = _JSON_INT + r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"


def _json_words(words: Iterable[str]) -> str:
    return '"(?:' + "|".join(re.escape(w) for w in words) + ')"'


def _json_leaf(types: tuple[type, ...]) -> str:
    """The JSON token(s) the exact validator accepts for these Python types."""
    base = {(str,): _JSON_STR, (int,): _JSON_INT, (int, float): _JSON_NUM}[
        tuple(t for t in types if t is not type(None))
    ]
    return f"(?:{base}|null)" if type(None) in types else base


def _json_array(item: str) -> str:
    return rf"\[(?:{item}(?:,{item})*)?\]"


def _json_object(fields: list[tuple[str, str]]) -> str:
    return r"\{" + ",".join(f'"{k}":{v}' for k, v in fields) + r"\}"


def _canonical_line_regex() -> str:
    """RE2 pattern of one record line as `rawruns.encode_record` writes it: compact JSON,
    record keys in RECORD_KEYS order, hit/shard/cost keys in their struct's order, every key
    present (optional ones too), every value a JSON token of the contract's type, why reasons
    and shard statuses from their vocabularies. A line that matches is a JSON object the exact
    validator accepts, with no key the contract does not know; a line that does not match goes
    to the exact path (which accepts other layouts too, or names the problem)."""
    hit = _json_object(
        [
            (f.name, _json_array(_json_words(WHY_REASONS)) if f.name == "why" else _json_leaf(HIT_FIELD_TYPES[f.name]))
            for f in HIT_STRUCT
        ]
    )
    shard = _json_object(
        [
            (f.name, _json_words(SHARD_STATUSES) if f.name == "status" else _json_leaf(SHARD_FIELD_TYPES[f.name]))
            for f in SHARD_STRUCT
        ]
    )
    cost = _json_object([(f.name, _json_leaf(COST_FIELD_TYPES[f.name])) for f in COST_STRUCT])
    nested = {"hits": _json_array(hit), "shards": _json_array(shard), "cost": cost}
    return _json_object([(k, nested.get(k) or _json_leaf(RAW_FIELD_TYPES[k])) for k in RECORD_KEYS])


# Certifies a run of whole record lines, each ending in a newline.
_CANONICAL_LINES = r"\A(?:" + _canonical_line_regex() + r"\n)+\z"


def _certified(lines: memoryview) -> bool:
    """Whether `lines` (whole lines, each ending in a newline) all have the canonical layout.
    pyarrow's RE2 kernel releases the GIL: pieces of a file are certified in parallel."""
    try:
        arr = pa.Array.from_buffers(
            pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, len(lines)], dtype=np.int64)), pa.py_buffer(lines)]
        )
        return bool(pc.match_substring_regex(arr, _CANONICAL_LINES)[0].as_py())
    except Exception:  # noqa: BLE001 - anything unexpected: not certified, exact path decides
        return False


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f"{f.name} {_duck_type(f.type)}" for f in t) + ")"
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    raise TypeError(f"no DuckDB type for {t}")


def _duckdb_query() -> str:
    """One scan of the file, every column typed as the contract says, except `why`: read as
    VARCHAR, which DuckDB fills with the list's compact JSON text (certified to hold only the
    known reasons) and `_why_flags` turns into flags. No per-hit expression in SQL: computing
    the flags or repeating run_id/system/qid per hit there costs more than it does in Arrow."""
    hit_t = pa.struct([f if f.name != "why" else pa.field("why", pa.string()) for f in HIT_STRUCT])
    columns = ", ".join(
        f"{f.name}: '{_duck_type(pa.list_(hit_t) if f.name == 'hits' else f.type)}'" for f in RAW_RECORD_SCHEMA
    )
    return (
        f"SELECT {', '.join(f.name for f in RAW_RECORD_SCHEMA)} "
        f"FROM read_json($path, format := 'newline_delimited', records := true, compression := 'none', "
        f"hive_partitioning := false, union_by_name := false, filename := false, columns := {{{columns}}})"
    )


def _why_flags(why: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
    """why_<reason> flags from each hit's `why` list as compact JSON text: dictionary-encoded
    per chunk (few distinct lists), each distinct list decoded once."""
    flags: dict[str, list[pa.Array]] = {r: [] for r in WHY_REASONS}
    for chunk in pc.dictionary_encode(why).chunks:
        lists = [json.loads(t) for t in chunk.dictionary.to_pylist()]
        idx = _np(chunk.indices)
        for r in WHY_REASONS:
            flags[r].append(_arrow(np.array([r in x for x in lists], dtype=bool)[idx]))
    return {r: pa.chunked_array(v, type=pa.bool_()) for r, v in flags.items()}


def _per_hit(col: pa.ChunkedArray, counts: np.ndarray) -> pa.Array:
    """A record-level string column repeated for each of the record's hits: a plain string
    array built directly when the column holds one value (run_id and system of a file), a
    take otherwise."""
    arr = col.combine_chunks()
    n = int(counts.sum())
    if len(arr) and not arr.null_count and pc.all(pc.equal(arr, arr[0])).as_py():
        v = arr[0].as_py().encode()
        if n * len(v) < 2**31 - 1:
            offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(v))
            return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(v * n)])
    return arr.take(_arrow(np.repeat(np.arange(len(arr), dtype=np.int64), counts)))


_DUCKDB_QUERY = _duckdb_query()
_FLOAT_COLUMNS = [f.name for f in RAW_RECORD_SCHEMA if pa.types.is_float64(f.type)]


def _all_finite(arrays: Iterable[pa.Array | pa.ChunkedArray]) -> bool:
    return all(pc.all(pc.is_finite(a)).as_py() is not False for a in arrays)


class _DuckScan(threading.Thread):
    """DuckDB's typed scan of a raw-run file (`_DUCKDB_QUERY`), run in a thread so that the
    file's bytes are read, hashed and certified beside it (DuckDB releases the GIL)."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path, self.table = path, None
        self.con = duckdb.connect(":memory:")

    def run(self) -> None:
        try:
            self.table = self.con.sql(_DUCKDB_QUERY, params={"path": self.path}).to_arrow_table()
        except Exception:  # noqa: BLE001 - DuckDB refused the file: the exact path names why
            self.table = None

    def finish(self, cancel: bool = False) -> pa.Table | None:
        if cancel:
            self.con.interrupt()
        self.join()
        self.con.close()
        return None if cancel else self.table


def _fast_scan(path: Path, fd: int) -> _DuckScan | None:
    """Start DuckDB's scan when the file's first line has the canonical layout (another
    writer's layout goes straight to the exact path); None otherwise."""
    spath = os.path.abspath(path)  # absolute: no "~" expansion or search path on DuckDB's side
    if any(c in spath for c in "*?[") or "://" in spath:  # DuckDB would read these as globs/URLs
        return None
    if not hasattr(os, "preadv"):  # the streaming readers need positional reads
        return None
    head = _first_line(fd)
    if head is None or not _certified(memoryview(head)):
        return None
    try:
        scan = _DuckScan(spath)
    except Exception:  # noqa: BLE001 - no DuckDB connection: the exact path does the work
        return None
    scan.start()
    return scan


# Bytes a streaming reader holds at a time: small, so the hash and the regex run on cached
# bytes and no fresh memory is touched (a fresh page costs more than hashing it here).
_CHUNK = 1 << 22
# Bytes of record lines per range a `_RangeReader` takes (C scanner, RE2 certification): small
# enough that the reader threads end within a range's time of each other (~30 ms), large
# enough that a range is several chunks.
_PIECE = 1 << 24
_MAX_LINE = 1 << 28  # a reader's buffer grows to hold a longer record line, up to this


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    n = os.preadv(fd, [buf], offset)
    if n <= 0:
        raise OSError("file shorter than its size")
    return n


def _background_priority(niceness: int = 10) -> None:
    """Lower the calling thread's CPU priority (Linux: per-thread nice). The verification
    threads (hash, certifiers) then fill the cores the caller's thread leaves idle instead of
    taking turns with it: the caller derives and writes at full speed while they run."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: same result, less overlap
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class _StreamHasher(threading.Thread):
    """sha256 of bytes [0, size) of an open file, read in chunks into one reused buffer."""

    def __init__(self, fd: int, size: int):
        super().__init__(daemon=True)
        self.fd, self.size, self.hexdigest = fd, size, None
        self.cancelled = threading.Event()  # set: stop early, no digest

    def run(self) -> None:
        _background_priority()
        try:
            h, buf = hashlib.sha256(), memoryview(bytearray(min(_CHUNK, max(self.size, 1))))
            pos = 0
            while pos < self.size:
                if self.cancelled.is_set():
                    return
                n = _pread_into(self.fd, buf[: min(len(buf), self.size - pos)], pos)
                h.update(buf[:n])
                pos += n
            self.hexdigest = h.hexdigest()
        except Exception:  # noqa: BLE001 - unreadable: the exact path reads (and reports) it
            self.hexdigest = None


class _RangeReader(threading.Thread):
    """Read ranges of whole lines of an open file, one range (i, start, end) at a time, taken
    from a queue the readers share: a thread that is given more of the cores takes more ranges,
    so they all end together. Each range is read in chunks into one reused buffer and each
    chunk's whole lines go to the consumer `open_range(i)` gives (True: accepted); when the
    range is done, `close_range(i)`. A refusal (or anything unexpected) sets `failed`, which
    stops the others. `label` names the work (the bench's phase table)."""

    def __init__(
        self,
        fd: int,
        ranges: collections.deque,
        failed: threading.Event,
        label: str,
        open_range: Callable[[int], Callable[[memoryview], bool]],
        close_range: Callable[[int], None] | None,
        background: bool,
    ):
        super().__init__(daemon=True)
        self.fd, self.ranges, self.failed, self.label = fd, ranges, failed, label
        self.open_range, self.close_range, self.background = open_range, close_range, background

    def run(self) -> None:
        if self.background:
            _background_priority()
        try:
            buf = bytearray(_CHUNK)
            while not self.failed.is_set():
                try:
                    i, start, end = self.ranges.popleft()
                except IndexError:
                    return
                buf = _stream_lines(self.fd, buf, start, end, self.open_range(i))
                if buf is None:
                    self.failed.set()
                    return
                if self.close_range is not None:
                    self.close_range(i)
        except Exception:  # noqa: BLE001 - anything unexpected: not accepted, the next path decides
            self.failed.set()


def _read_ranges(
    fd: int,
    end: int,
    label: str,
    open_range: Callable[[int], Callable[[memoryview], bool]],
    close_range: Callable[[int], None] | None = None,
    background: bool = False,
) -> tuple[list[_RangeReader], threading.Event, int]:
    """Bytes [0, end) of `fd` (whole lines) cut into ranges (`_line_ranges`) and read by one
    started `_RangeReader` per core (at most 8): (the readers, their shared `failed` event, the
    number of ranges). Once the readers are joined, every range was accepted unless `failed`
    is set."""
    ranges = _line_ranges(fd, end)
    n = len(ranges)
    failed = threading.Event()
    readers = [
        _RangeReader(fd, ranges, failed, label, open_range, close_range, background)
        for _ in range(min(os.cpu_count() or 1, 8, n))
    ]
    for r in readers:
        r.start()
    return readers, failed, n


def _stream_lines(
    fd: int, buf: bytearray, start: int, end: int, consume: Callable[[memoryview], bool]
) -> bytearray | None:
    """Read bytes [start, end) of `fd` (a run of whole lines) in chunks into `buf`, handing each
    chunk's whole lines to `consume` at once. The buffer (grown for a line longer than it) when
    `consume` accepted every piece and the range ends with a whole line, else None."""
    mv = memoryview(buf)
    pos, have = start, 0
    while pos < end:
        pos += (n := _pread_into(fd, mv[have : min(len(buf), have + end - pos)], pos))
        have += n
        last = buf.rfind(b"\n", 0, have)
        if last < 0:
            if have == len(buf):  # a line longer than the buffer: a larger buffer
                if len(buf) >= _MAX_LINE or buf.find(b"\x00", 0, have) >= 0:
                    return None  # not accepted (too long, or NUL bytes: not JSON): the exact path names it
                mv.release()
                buf.extend(bytes(len(buf)))
                mv = memoryview(buf)
            continue
        if not consume(mv[: last + 1]):
            return None
        buf[: have - last - 1] = buf[last + 1 : have]
        have -= last + 1
    mv.release()
    return buf if have == 0 else None


def _line_start_after(fd: int, pos: int, end: int) -> int | None:
    """The offset just past the first newline at or after `pos` (None when none before `end`)."""
    while pos < end:
        window = os.pread(fd, min(1 << 16, end - pos), pos)
        if not window:
            return None
        i = window.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(window)
    return None


def _line_ranges(fd: int, end: int) -> collections.deque:
    """Bytes [0, end) (whole lines) cut at line starts into ranges of about `_PIECE` bytes:
    a queue of (i, start, end) in file order."""
    bounds = [0]
    n_pieces = max(1, min(256, end // _PIECE))
    for k in range(1, n_pieces):
        b = _line_start_after(fd, max(bounds[-1], end * k // n_pieces), end)
        if b is not None and bounds[-1] < b < end:
            bounds.append(b)
    bounds.append(end)
    return collections.deque((i, a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:])))


def _tail_trailer(fd: int, size: int) -> tuple[int, int] | None:
    """(offset of the newline that ends the last record, declared record count) read from the
    file's tail, or None when the tail is anything but records then a well-formed done line
    (the exact path then reads the whole file and says what is wrong)."""
    take = min(size, 1 << 20)
    tail = os.pread(fd, take, size - take)
    cut, end = _last_line(tail)
    if cut < 0:
        return None
    is_done, declared = _done_line(tail[cut + 1 : end])
    if not is_done or declared is None or declared < 1:
        return None
    return size - take + cut, declared


def _fast_tables(table: pa.Table | None, declared: int) -> tuple[pa.Table, pa.Table, np.ndarray] | None:
    """DuckDB's scan -> (records without hits, flat hits in record order, hits per record),
    or None when the scan does not look like `declared` certified records plus the done line.
    Only usable once the certifiers have accepted every record line."""
    # the record lines plus the done line, which reads as an all-null row
    if (
        table is None
        or declared < 1
        or table.num_rows != declared + 1
        or table.column("run_id").null_count != 1
        or table.column("run_id")[-1].is_valid
    ):
        return None
    try:  # RE2 matches the bytes as Latin-1 and DuckDB keeps a string's bytes: invalid UTF-8
        table.validate(full=True)  # (or an encoded surrogate) would pass both into Arrow strings
    except pa.ArrowInvalid:
        return None
    table = table.slice(0, declared)
    hits_col = table.column("hits")
    if hits_col.null_count:
        return None
    hit_t = hits_col.type.value_type
    names = [x.name for x in hit_t]
    hits = pa.Table.from_batches(
        [pa.RecordBatch.from_arrays(pc.list_flatten(c).flatten(), names=names) for c in hits_col.chunks],
        schema=pa.schema(list(hit_t)),
    )
    counts = _np(pc.list_value_length(hits_col)).astype(np.int64)
    for r, flag in _why_flags(hits.column("why")).items():
        hits = hits.append_column(f"why_{r}", flag)
    if some_hit_unflagged(hits.column(f"why_{r}") for r in WHY_REASONS):
        return None  # an empty why (refused) or none: the exact path names it
    hits = hits.drop_columns(["why"])
    rec = table.drop_columns(["hits"])
    shards = pa.chunked_array(
        [pc.list_flatten(c) for c in rec.column("shards").chunks], type=rec.schema.field("shards").type.value_type
    )
    floats = (
        [rec.column(f) for f in _FLOAT_COLUMNS]
        + [hits.column("score"), pc.struct_field(rec.column("cost"), "cpu_ms")]
        + [pc.struct_field(shards, f.name) for f in SHARD_STRUCT if pa.types.is_float64(f.type)]
    )
    # JSON allows numbers too large for a double (1e400 reads as inf): leave those to the exact path
    if counts.sum() != hits.num_rows or not _all_finite(floats):
        return None
    return rec, hits, counts


def _flatten_hits(path: Path, hits_col: pa.ChunkedArray, body: memoryview) -> tuple[pa.Table, np.ndarray]:
    """The hits of every record as one table (fields of HIT_STRUCT minus `why`, plus
    why_lex/why_struct/why_sem) and each hit's record index. pyarrow compute over the list
    arrays, chunk by chunk: no explode of the whole record table, no per-row Python."""
    batches, parents = [], []
    offset = 0
    reasons = pa.array(list(WHY_REASONS))
    names = [f.name for f in HIT_STRUCT if f.name != "why"]
    for chunk in hits_col.chunks:
        flat = pc.list_flatten(chunk)
        parent = pc.list_parent_indices(chunk).to_numpy() + offset
        if flat.null_count:  # null elements of a hits list carry no hit
            keep = pc.is_valid(flat)
            flat, parent = flat.filter(keep), parent[keep.to_numpy(zero_copy_only=False)]
        fields = dict(zip([f.name for f in HIT_STRUCT], flat.flatten()))
        for f in _HIT_REQUIRED:
            if fields[f].null_count:
                validate_lines(path, body)
                bad = int(parent[pc.is_null(fields[f]).to_numpy(zero_copy_only=False)][0])
                raise _fail(path, bad + 1, f"hits[].{f}", "missing or null")
        why = fields["why"]
        why_flat = pc.list_flatten(why)
        why_hit = pc.list_parent_indices(why).to_numpy()
        known = pc.is_in(why_flat, value_set=reasons).to_numpy(zero_copy_only=False)
        # a reason outside the vocabulary, an empty list, or "unknown" not alone (issue 18)
        lengths = _np(pc.list_value_length(why).fill_null(0))
        alone = _np(pc.equal(why_flat, WHY_UNKNOWN).fill_null(False)) & (lengths[why_hit] == 1)
        bad_el = np.flatnonzero(~known & ~alone)
        if len(bad_el):
            i = int(bad_el[0])
            h, word = int(why_hit[i]), why_flat[i].as_py()
            msg = (
                why_problem(why[h].as_py(), WHY_REASONS)
                if word == WHY_UNKNOWN
                else f"unknown reason {word!r}; allowed {list(WHY_REASONS)}"
            )
            raise _fail(path, int(parent[h]) + 1, "hits[].why", msg)
        empty = np.flatnonzero(lengths == 0)
        if len(empty):
            raise _fail(path, int(parent[empty[0]]) + 1, "hits[].why", why_problem([], WHY_REASONS))
        cols = [fields[n] for n in names]
        for reason in WHY_REASONS:
            is_r = pc.equal(why_flat, reason).to_numpy(zero_copy_only=False)
            cols.append(pa.array(np.bincount(why_hit[is_r], minlength=len(flat)) > 0))
        batches.append(pa.RecordBatch.from_arrays(cols, names=names + [f"why_{r}" for r in WHY_REASONS]))
        parents.append(parent)
        offset += len(chunk)
    schema = pa.schema([(n, HIT_STRUCT.field(n).type) for n in names] + [(f"why_{r}", pa.bool_()) for r in WHY_REASONS])
    table = pa.Table.from_batches(batches, schema=schema)
    return table, (np.concatenate(parents) if parents else np.zeros(0, dtype=np.int64))


def records_to_tables(
    table: pa.Table, sha: str, path: str | Path = "<records>", body: memoryview | bytes = b""
) -> tuple[pl.DataFrame, pa.Table]:
    """Validate the nested hits and shards of one parsed raw-run file (exact path) and derive
    its agg rows (polars, one row per record) and hits rows (pyarrow + numpy)."""
    path = Path(path)
    hits, parent = _flatten_hits(path, table.column("hits"), body)
    counts = np.bincount(parent, minlength=table.num_rows)
    return _derive(path, table.drop_columns(["hits"]), hits, counts, sha, body)


def _shard_in_sla(
    shard_done: pl.DataFrame, sla: np.ndarray, counts: np.ndarray, hit_shard: pa.ChunkedArray
) -> np.ndarray:
    """For every hit: its shard is null, or gave an `ok` answer within the record's sla_ms
    (`shard_done`: ms from request to each (record, shard)'s first ok answer). A dense
    (record, shard) table of booleans when shard ids span a small range (they are
    0..n_shards-1 in practice), gathered per hit; a polars join otherwise."""
    n = len(counts)
    shard_null = _np(pc.is_null(hit_shard))
    lo_hi = pc.min_max(hit_shard).as_py()
    lo, hi = lo_hi["min"], lo_hi["max"]
    if shard_done.height:
        lo, hi = min(lo, shard_done["shard"].min()), max(hi, shard_done["shard"].max())
    width = int(hi) - int(lo) + 1
    if n * width <= min(max(1 << 22, 4 * len(shard_null)), 2**31 - 1):
        row = shard_done["_row"].to_numpy().astype(np.int64)
        cell_ok = np.zeros(n * width, dtype=bool)
        with np.errstate(invalid="ignore"):  # no done_ts (NaN) -> not within the SLA
            cell_ok[row * width + (shard_done["shard"].to_numpy().astype(np.int64) - lo)] = (
                shard_done["_done_ms"].to_numpy() <= sla[row]
            )
        key = np.repeat((np.arange(n, dtype=np.int64) * width - lo).astype(np.int32), counts)
        key += pl.from_arrow(hit_shard).fill_null(lo).to_numpy()
        return shard_null | cell_ok[key]
    done = pl.DataFrame(
        {"_row": np.repeat(np.arange(n, dtype=np.uint32), counts), "shard": pl.from_arrow(hit_shard)}
    ).join(
        shard_done.with_columns(pl.col("_row").cast(pl.UInt32)), on=["_row", "shard"], how="left", maintain_order="left"
    )
    with np.errstate(invalid="ignore"):
        return shard_null | (done["_done_ms"].to_numpy() <= np.repeat(sla, counts))  # NaN -> False


def _derive(
    path: Path, table: pa.Table, hits: pa.Table, counts: np.ndarray, sha: str, body: memoryview | bytes
) -> tuple[pl.DataFrame, pa.Table]:
    """Agg rows (polars, one row per record) and hits rows (pyarrow + numpy, no explode/sort
    of millions of rows unless a ranking is out of rank order) from the records (without
    their hits), the flat hits in record order (hit fields and why flags) and each record's
    number of hits."""
    n = table.num_rows
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])

    def per_record(flags: np.ndarray) -> np.ndarray:  # how many of each record's hits are flagged
        padded = np.zeros(len(flags) + 1, dtype=np.uint8)  # a last 0: every start is an index
        padded[:-1] = flags
        total = np.add.reduceat(padded, starts[:-1], dtype=np.int64)
        total[counts == 0] = 0  # reduceat gives the element at an empty segment's start
        return total

    df = pl.from_arrow(table).with_row_index("_row")
    row = pl.col("_row")
    shards = df.select(row, "req_ts", "shards").explode("shards").drop_nulls("shards").unnest("shards")
    for f in _SHARD_REQUIRED:
        if shards[f].null_count():
            validate_lines(path, body)
            bad = shards.filter(pl.col(f).is_null())["_row"][0]
            raise _fail(path, int(bad) + 1, f"shards[].{f}", "missing or null")
    bad = shards.filter(~pl.col("status").is_in(list(SHARD_STATUSES)))
    if bad.height:
        raise _fail(
            path, int(bad["_row"][0]) + 1, "shards[].status", f"{bad['status'][0]!r} not in {list(SHARD_STATUSES)}"
        )
    cost = df["cost"].struct.unnest()
    for f in COST_FIELD_TYPES:
        if cost[f].null_count():
            raise _fail(path, _first_index(cost[f].is_null()) + 1, f"cost.{f}", "missing or null")
    in_rank_order = _in_rank_order(_np(hits.column("rank")), starts)
    _check_contract(path, df, shards, hits, starts, in_rank_order)

    shard_stats = shards.group_by("_row").agg(
        pl.col("shard").n_unique().alias("shards_total"),
        pl.col("shard").filter(pl.col("status") == "timeout").n_unique().alias("shards_timed_out"),
        (pl.len() > pl.col("shard").n_unique()).alias("hedged"),
    )
    # SPEC §4: hits from shards or queries that finished after sla_ms are not returned.
    rec = df.select(
        (
            (
                pl.col("error").is_null() & pl.col("lat_ms").is_not_null() & (pl.col("lat_ms") <= pl.col("sla_ms"))
            ).fill_null(False)
        ).alias("ok"),
        "sla_ms",
    )
    in_sla = np.repeat(rec["ok"].to_numpy(), counts)
    hit_shard = hits.column("shard")
    if hit_shard.null_count < len(hit_shard):
        shard_done = (
            shards.filter(pl.col("status") == "ok")
            .group_by("_row", "shard")
            .agg((pl.col("done_ts") - pl.col("req_ts")).min().alias("_done_ms"))
        )
        in_sla &= _shard_in_sla(shard_done, rec["sla_ms"].to_numpy(), counts, hit_shard)
    n_hits = np.asarray(counts, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mix = {
            r: np.where(n_hits > 0, per_record(_np(hits.column(f"why_{r}"))) / np.maximum(n_hits, 1), 0.0)
            for r in WHY_REASONS
        }
    agg = (
        df.join(shard_stats, on="_row", how="left")
        .with_columns(
            pl.Series("n_hits", n_hits, dtype=pl.Int32),
            pl.Series("n_hits_in_sla", per_record(in_sla).astype(np.int32)),
            *[pl.Series(f"why_mix_{r}", mix[r], dtype=pl.Float64) for r in WHY_REASONS],
        )
        .with_columns(
            pl.from_epoch(pl.col("req_ts").round(0).cast(pl.Int64), time_unit="ms")
            .dt.replace_time_zone("UTC")
            .alias("req_ts"),
            ((pl.col("lat_ms") <= pl.col("sla_ms")) & pl.col("error").is_null()).fill_null(False).alias("within_sla"),
            pl.col("shards_total", "shards_timed_out").fill_null(0),
            pl.col("hedged").fill_null(False),
            pl.col("cost").struct.field("probes").alias("probes"),
            pl.col("cost").struct.field("cpu_ms").alias("cpu_ms"),
            pl.lit(sha).alias("attestation_sha256"),
        )
        .sort("_row")
    )
    cols = {c: _per_hit(table.column(c), counts) for c in ("run_id", "system", "qid")}
    for f in HITS_SCHEMA:
        if f.name in hits.column_names:
            cols[f.name] = hits.column(f.name)
    cols["in_sla"] = _arrow(in_sla)
    out = pa.table({f.name: cols[f.name] for f in HITS_SCHEMA})
    # hits listed out of rank order within a record: sort them (rare; the writers list by rank)
    if not in_rank_order:
        parent = np.repeat(np.arange(n, dtype=np.int64), counts)
        out = out.take(_arrow(np.lexsort((_np(hits.column("rank")), parent))))
    return agg.select([f.name for f in AGG_SCHEMA]), out


def _in_rank_order(rank: np.ndarray, starts: np.ndarray) -> bool:
    """Whether every record's hits are listed in strictly increasing rank order (so no rank
    repeats within a record). `starts`: each record's first hit index, then the number of hits."""
    if len(rank) < 2:
        return True
    ordered = rank[1:] > rank[:-1]
    first = starts[1:-1][starts[1:-1] < len(rank)]  # index of each record's first hit
    ordered[first[first > 0] - 1] = True
    return bool(ordered.all())


def _check_contract(
    path: Path, df: pl.DataFrame, shards: pl.DataFrame, hits: pa.Table, starts: np.ndarray, in_rank_order: bool
) -> None:
    """The validation contract (`lens_core.common.validate`) on one file's parsed records, shards
    and flat hits: the first row that breaks a rule stops ingestion, named by file, line and
    field. Vectorised: polars over the numeric columns (zero-copy), the Arrow screen of the
    id rules over the hits' strings (converted only when a value may be empty)."""
    recs = df.select(
        "run_id",
        "system",
        "qid",
        "req_ts",
        "sla_ms",
        "lat_ms",
        pl.col("cost").struct.field("cpu_ms").alias("cost.cpu_ms"),
    )
    v = first_violation(recs, record_rules())
    if v is not None:
        raise _fail(path, v.row + 1, v.column, v.message)
    v = first_violation(shards, shard_rules())
    if v is not None:
        raise _fail(path, int(shards["_row"][v.row]) + 1, f"shards[].{v.column}", v.message)
    num = pl.from_arrow(hits.select(["rank", "start_line", "end_line", "score"]))
    if not in_rank_order:  # the record of each hit, for the uniqueness of ranks within a record
        num = num.with_columns(pl.Series("_rec", np.repeat(np.arange(len(starts) - 1), np.diff(starts))))
    found = [
        first_violation(
            num, [*rank_rules(["_rec"], "record", known_unique=in_rank_order), *span_rules(), *finite_rules(["score"])]
        )
    ]
    for c in ("repo", "path"):
        if maybe_blank(hits.column(c)):
            found.append(first_violation(pl.from_arrow(hits.select([c])), id_rules([c])))
    found = [x for x in found if x is not None]
    if found:
        v = min(found, key=lambda x: x.row)
        rec = int(np.searchsorted(starts, v.row, side="right")) - 1
        raise _fail(path, rec + 1, f"hits[{v.row - int(starts[rec])}].{v.column}", v.message)


class _FastFile:
    """The fast path for one open file whose first line has the canonical layout, DuckDB's scan
    of it already running. Work is ordered so that no core idles on a 2-core machine:

    1. `tables()`: DuckDB's scan has the cores to itself (it is most of the work and everything
       else waits for it); then the file is streamed once for its sha256 and once (in pieces,
       one thread each) through the certifier, while the caller's thread derives the tables
       from DuckDB's values (and may go on to write them: `ingest_to_parquet`).
    2. `verified_sha()`: waits for the hash and the certifiers; the sha256 only when every
       record line is certified, the done line is well formed and counts DuckDB's records, and
       the file's identity (inode, size, mtime) is the same after the scan and after the hash
       as when it was opened. Otherwise None: nothing derived may be used (the exact path
       re-reads the file and names what is wrong).
    """

    def __init__(self, path: Path, fd: int, st: os.stat_result, scan: _DuckScan):
        self.path, self.fd, self.st, self.scan = path, fd, st, scan
        self.hasher: _StreamHasher | None = None
        self.certifiers: list[_RangeReader] = []
        self.certify_failed = threading.Event()
        self.failed = False

    def tables(self) -> tuple[pl.DataFrame, pa.Table] | None:
        """(agg rows without their attestation_sha256, hits rows), or None."""
        try:
            tail = _tail_trailer(self.fd, self.st.st_size)
            if tail is None:
                return self._fail()
            cut, declared = tail
            table, self.scan = self.scan.finish(), None
            if not _same_file(self.path, self.st):
                return self._fail()  # the file changed under us
            self._start_verification(cut + 1)
            fast = _fast_tables(table, declared)
            del table
            if fast is None:
                return self._fail()
            try:
                return _derive(self.path, *fast, "", b"")
            except Exception:  # noqa: BLE001 - the exact path re-derives and names the problem
                return self._fail()
        except OSError:
            return self._fail()

    def _start_verification(self, end: int) -> None:
        """Hash the whole file and certify its record lines (bytes [0, end)) in threads."""
        self.hasher = _StreamHasher(self.fd, self.st.st_size)
        self.hasher.start()
        self.certifiers, self.certify_failed, _ = _read_ranges(
            self.fd, end, "RE2 certification", lambda i: _certified, background=True
        )

    def _fail(self) -> None:
        self.failed = True
        return None

    def verified_sha(self) -> str | None:
        self.close()
        if self.failed or self.hasher is None or self.hasher.hexdigest is None:
            return None
        if self.certify_failed.is_set():
            return None
        try:
            return self.hasher.hexdigest if _same_file(self.path, self.st) else None
        except OSError:
            return None

    def close(self) -> None:
        """Stop DuckDB's scan if it still runs; wait for the hash and the certifiers."""
        if self.scan is not None:
            self.scan.finish(cancel=True)
            self.scan = None
        if self.hasher is not None:
            self.hasher.join()
        for c in self.certifiers:
            c.join()


# ---------------------------------------------------------------------------------------------
# Canonical scan: the C scanner (`_canonscan.c`) parses and validates canonical lines at once
# ---------------------------------------------------------------------------------------------
def _canon_leaf(name: str, types: tuple[type, ...]) -> tuple[str, str, bool]:
    base = {(str,): "str", (int,): "int", (int, float): "num"}[tuple(t for t in types if t is not type(None))]
    return base, name, type(None) in types


def _canon_spec() -> tuple:
    """The canonical record layout for the C scanner, generated from the contract like
    `_canonical_line_regex` (same keys, order, JSON types and vocabularies). Column names:
    the record's fields, `hits` / `shards` (items per record), `hits.<field>`,
    `hits.why.<reason>` (0/1 per hit), `shards.<field>`, `cost.<field>`."""
    hit = (
        "obj",
        "hits",
        [
            (
                f.name,
                ("flags", "hits.why", list(WHY_REASONS))
                if f.name == "why"
                else _canon_leaf(f"hits.{f.name}", HIT_FIELD_TYPES[f.name]),
            )
            for f in HIT_STRUCT
        ],
    )
    shard = (
        "obj",
        "shards",
        [
            (
                f.name,
                ("enum", "shards.status", list(SHARD_STATUSES))
                if f.name == "status"
                else _canon_leaf(f"shards.{f.name}", SHARD_FIELD_TYPES[f.name]),
            )
            for f in SHARD_STRUCT
        ],
    )
    cost = ("obj", "cost", [(f.name, _canon_leaf(f"cost.{f.name}", COST_FIELD_TYPES[f.name])) for f in COST_STRUCT])
    nested = {"hits": ("list", "hits", hit), "shards": ("list", "shards", shard), "cost": cost}
    return "obj", "record", [(k, nested.get(k) or _canon_leaf(k, RAW_FIELD_TYPES[k])) for k in RECORD_KEYS]


_CANON_SPEC = _canon_spec()


def _canon_columns(columns: list[tuple]) -> dict[str, pa.Array]:
    """The scanner's column buffers as Arrow arrays (zero-copy; validity bytes -> bitmaps)."""
    out = {}
    for name, typ, vals, data, valid in columns:
        width = {"i32": 4, "f64": 8, "u8": 1, "str": 4}[typ]
        n = len(vals) // width - (typ == "str")
        bitmap, nulls = None, 0
        if valid is not None:
            v = np.frombuffer(valid, dtype=np.uint8)
            nulls = n - int(np.count_nonzero(v))
            if nulls:
                bitmap = pa.py_buffer(np.packbits(v, bitorder="little"))
        if typ == "u8":  # 0/1 bytes -> a bit-packed boolean array
            out[name] = pa.Array.from_buffers(
                pa.bool_(), n, [None, pa.py_buffer(np.packbits(np.frombuffer(vals, dtype=np.uint8), bitorder="little"))]
            )
        elif typ == "str":
            out[name] = pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(vals), pa.py_buffer(data)], nulls)
        else:
            out[name] = pa.Array.from_buffers(
                pa.int32() if typ == "i32" else pa.float64(), n, [bitmap, pa.py_buffer(vals)], nulls
            )
    return out


def _offsets(lengths: pa.Array) -> pa.Array:
    off = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(_np(lengths), out=off[1:])
    return _arrow(off)


def _canon_batches(columns: list[tuple]) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """One range's columns -> (records without hits, as `_fast_tables` gives them; flat hits)."""
    c = _canon_columns(columns)
    shards = pa.ListArray.from_arrays(
        _offsets(c["shards"]),
        pa.StructArray.from_arrays([c[f"shards.{f.name}"] for f in SHARD_STRUCT], fields=list(SHARD_STRUCT)),
    )
    cost = pa.StructArray.from_arrays([c[f"cost.{f.name}"] for f in COST_STRUCT], fields=list(COST_STRUCT))
    nested = {"shards": shards, "cost": cost, "hits": c["hits"]}  # hits: the number per record
    rec = pa.RecordBatch.from_arrays(
        [nested.get(f.name) or c[f.name] for f in RAW_RECORD_SCHEMA], names=[f.name for f in RAW_RECORD_SCHEMA]
    )
    names = [f.name for f in HIT_STRUCT if f.name != "why"]
    hits = pa.RecordBatch.from_arrays(
        [c[f"hits.{n}"] for n in names] + [c[f"hits.why.{r}"] for r in WHY_REASONS],
        names=names + [f"why_{r}" for r in WHY_REASONS],
    )
    return rec, hits


def _canon_tables(chunks: list[list[tuple]], declared: int) -> tuple[pa.Table, pa.Table, np.ndarray] | None:
    """The ranges' columns, in file order -> (records without hits, flat hits, hits per record),
    or None when the record count differs from the done line's."""
    recs, hitss = zip(*(_canon_batches(ch) for ch in chunks))
    rec = pa.Table.from_batches(recs)
    if rec.num_rows != declared:
        return None
    counts = _np(rec.column("hits")).astype(np.int64)
    hits = pa.Table.from_batches(hitss)
    if some_hit_unflagged(hits.column(f"why_{r}") for r in WHY_REASONS):
        return None  # an empty why: the exact path refuses it, naming the line
    return rec.drop_columns(["hits"]), hits, counts


class _CanonFile:
    """The C-scanner path for one open file: its record lines parsed (and so validated) in
    ranges by one thread per core while the file is hashed at a lower priority beside them;
    the caller then derives (and writes) while the hash finishes.

    `tables()` gives None when any line is not in the canonical layout the scanner accepts
    (nothing it parsed is used; the DuckDB + RE2 path or the exact path takes the file);
    `verified_sha()` gives the sha256 only when the hash read the whole file and the file's
    identity (inode, size, mtime) is the same as when it was opened."""

    def __init__(self, path: Path, fd: int, st: os.stat_result):
        self.path, self.fd, self.st = path, fd, st
        self.hasher: _StreamHasher | None = None

    def tables(self) -> tuple[pl.DataFrame, pa.Table] | None:
        try:
            tail = _tail_trailer(self.fd, self.st.st_size)
            if tail is None:
                return None
            cut, declared = tail
            self.hasher = _StreamHasher(self.fd, self.st.st_size)
            self.hasher.start()
            scanners: dict[int, object] = {}  # range -> its scanner, while it is read
            chunks: dict[int, list[tuple]] = {}  # range -> its columns

            def open_range(i: int) -> Callable[[memoryview], bool]:
                scanners[i] = _canonscan.Scanner(_CANON_SPEC)
                return scanners[i].feed

            def close_range(i: int) -> None:
                chunks[i] = scanners.pop(i).finish()

            # normal priority: the caller waits for the parse, the hash takes what is left
            readers, failed, n = _read_ranges(self.fd, cut + 1, "C scanner: parse + validate", open_range, close_range)
            for r in readers:
                r.join()
            if failed.is_set() or len(chunks) != n or not _same_file(self.path, self.st):
                return None
            fast = _canon_tables([chunks[i] for i in range(n)], declared)
            chunks.clear()
            if fast is None:
                return None
            return _derive(self.path, *fast, "", b"")
        except Exception:  # noqa: BLE001 - declined: the next path re-reads the file and names any problem
            return None

    def verified_sha(self) -> str | None:
        if self.hasher is None:
            return None
        self.hasher.join()
        try:
            return self.hasher.hexdigest if self.hasher.hexdigest and _same_file(self.path, self.st) else None
        except OSError:
            return None

    def close(self) -> None:
        """Stop the hash if it still runs (after a decline) and wait for it."""
        if self.hasher is not None:
            self.hasher.cancelled.set()
            self.hasher.join()


def _canon_file(path: Path, fd: int, st: os.stat_result) -> _CanonFile | None:
    """The C-scanner path for a file whose first line the scanner accepts; None when the
    scanner is not built or the first line has another layout (no thread is started for it)."""
    if _canonscan is None or not hasattr(os, "preadv"):  # the streaming readers need positional reads
        return None
    try:
        head = _first_line(fd)
        if head is None or not _canonscan.Scanner(_CANON_SPEC).feed(head):
            return None
    except OSError:
        return None
    return _CanonFile(path, fd, st)


_DONE_MAX = 1 << 20  # bytes a done line may hold (it is about 30)


def _check_text(path: Path, fd: int, size: int) -> None:
    """What the exact path checks before it reads a file whole, streaming (bounded memory):
    the last line is a done line with an integer record count (the verdicts of
    `_split_trailer`, which then holds), no line holds a control byte that JSON cannot hold
    (a NUL-filled or binary file) and none is longer than `_MAX_LINE`."""
    end = size  # past the last byte that is not a trailing newline
    while end:
        take = min(end, _CHUNK)
        kept = len(os.pread(fd, take, end - take).rstrip(b"\n"))
        end -= take - kept
        if kept:
            break
    if not end:
        raise _fail(path, 1, None, "empty file: stream ended without a done line")
    take = min(end, _DONE_MAX + 1)
    tail = os.pread(fd, take, end - take)
    cut = tail.rfind(b"\n")
    is_done, declared = (False, None) if cut < 0 and take < end else _done_line(tail[cut + 1 :])
    if not is_done:
        line = count_newlines(fd, end) + 1
        raise _fail(path, line, None, "stream ended without a done line (truncated run file)")
    if declared is None:
        raise _fail(path, count_newlines(fd, end) + 1, "records", "done line lacks an integer record count")
    prescan_lines(path, fd, max_line=_MAX_LINE, utf8=False, kind="JSON")


def _same_file(path: Path, st: os.stat_result) -> bool:
    """Whether `path` still names the file `st` describes, unchanged (inode, size, mtime)."""
    now = os.stat(path)
    return (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def _with_sha(agg: pl.DataFrame, sha: str) -> pl.DataFrame:
    return agg.with_columns(pl.lit(sha).alias("attestation_sha256"))


def _ingest_exact(path: Path, data: bytes) -> tuple[pl.DataFrame, pa.Table]:
    hasher = _Hasher(data)
    hasher.start()
    try:
        body, declared = _split_trailer(path, data)
        table = _parse_exact(path, data, body, declared)
    finally:
        hasher.join()
    return records_to_tables(table, hasher.hexdigest, path, body)


def _fast_tiers(path: Path, fd: int, st: os.stat_result) -> Iterator[_CanonFile | _FastFile]:
    """The fast paths for an open file, in order: the C scanner, then RE2 + DuckDB; each one
    is created (and DuckDB's scan started) only when the one before has declined."""
    canon = _canon_file(path, fd, st)
    if canon is not None:
        yield canon
    scan = _fast_scan(path, fd)
    if scan is not None:
        yield _FastFile(path, fd, st, scan)


def _ingest_file(path: Path, write_hits: Callable[[pa.Table], None] | None = None) -> tuple[pl.DataFrame, pa.Table]:
    """One raw-run file -> (agg rows, hits rows): the first fast path that accepts the file
    (`_CanonFile`, `_FastFile`), the exact path otherwise (the whole file read into memory).

    With `write_hits` (`ingest_to_parquet`), a fast path hands the hits to it before the
    verification's verdict, so that the encode runs beside the hash (and the certifiers); a
    file then refused raises `_Unverified` (what was written must be discarded). The exact path
    hands them over once they are validated."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            for fast in _fast_tiers(path, f.fileno(), st):
                try:
                    out = fast.tables()
                    if out is not None:
                        if write_hits is not None:
                            write_hits(out[1])
                        sha = fast.verified_sha()
                        if sha is not None:
                            return _with_sha(out[0], sha), out[1]
                        if write_hits is not None:
                            raise _Unverified(str(path))
                finally:
                    fast.close()
            _check_text(path, f.fileno(), st.st_size)  # absurd input is refused before it is read whole
            data = f.read()
    except OSError as e:
        raise _fail(path, None, None, f"cannot read ({e.strerror})") from None
    agg, hits = _ingest_exact(path, data)
    del data
    if write_hits is not None:
        write_hits(hits)
    return agg, hits


def _combine(aggs: list[pl.DataFrame]) -> pl.DataFrame:
    """The files' agg rows as one table; duplicate (run_id, system, qid) rows are refused."""
    if not aggs:
        raise SchemaError("no raw-run files to ingest")
    agg = pl.concat(aggs, how="vertical_relaxed")
    dup = agg.group_by("run_id", "system", "qid").len().filter(pl.col("len") > 1)
    if dup.height:
        r = dup.row(0, named=True)
        raise SchemaError(f"duplicate record for run_id={r['run_id']} system={r['system']} qid={r['qid']}")
    return agg


def combine_agg(aggs: list[pl.DataFrame]) -> pl.DataFrame:
    """Several ingestion steps' agg rows (one system each, issue 22) as the week's agg table,
    conformed to the contract; duplicate (run_id, system, qid) rows across them are refused."""
    return pl.from_arrow(conform(_combine(aggs), AGG_SCHEMA, "agg"))


def ingest(paths: Iterable[str | Path]) -> tuple[pa.Table, pa.Table]:
    """Ingest raw-run files -> (agg, hits) Arrow tables conformed to the contract.

    Every file is validated before anything is returned, so a caller that writes only after
    this returns never leaves half an ingestion on disk. Duplicate (run_id, system, qid)
    rows across files are refused.
    """
    aggs, hitss = [], []
    for p in paths:
        a, h = _ingest_file(Path(p))
        aggs.append(a)
        hitss.append(h)
    agg = _combine(aggs)
    hits = pa.concat_tables(hitss) if len(hitss) > 1 else hitss[0]
    return conform(agg, AGG_SCHEMA, "agg"), conform(hits, HITS_SCHEMA, "hits")


class _Unverified(Exception):
    """A fast-path file failed verification after its hits were handed to the writer."""


def ingest_to_parquet(
    paths: Iterable[str | Path], agg_path: str | os.PathLike | None, hits_path: str | os.PathLike
) -> tuple[pa.Table, ParquetFile]:
    """Ingest raw-run files into the agg table (returned) and the hits Parquet file (written):
    the same tables as `ingest`, hits written with `tables.write_parquet`'s options, atomically
    (a temporary file renamed into place only when every raw file is validated), nothing
    written on any error. With an `agg_path`, agg is written there too (`write_parquet`).

    Faster than `ingest` then `write_parquet`: each fast-path file's hits are encoded into the
    temporary Parquet file while that file is still being hashed and certified, so the writer
    and the verification share the cores instead of taking turns (on the 48,768-query bench
    file: 4.4 s -> 3.6 s on 2 cores). A file that fails verification after that aborts the
    temporary file, and the whole set is ingested again on the exact path. Hits are written in
    row groups per file, so a multi-file result holds the same rows as
    `write_parquet(ingest(...))` in the same order, possibly grouped differently; a single
    file gives the same bytes.

    Returns (agg table conformed to the contract, the hits file)."""
    paths = [objectstore.sync_file(p) for p in paths]  # s3:// data dir: a raw run from another worker
    if not paths:
        raise SchemaError("no raw-run files to ingest")
    try:
        agg, hits = _ingest_to_parquet(paths, Path(hits_path))
    except _Unverified:
        agg, hits_t = ingest(paths)
        info = write_parquet(hits_t, hits_path, schema=HITS_SCHEMA, name="hits")
        hits = ParquetFile(Path(info["path"]), info["sha256"], info["rows"])
    if agg_path is not None:
        write_parquet(agg, agg_path, schema=AGG_SCHEMA, name="agg")
    return agg, hits


def _ingest_to_parquet(paths: list[Path], hits_path: Path) -> tuple[pa.Table, ParquetFile]:
    aggs: list[pl.DataFrame] = []
    n_hits = 0
    digest: list[str] = []
    with atomic_path(hits_path, suffix=".parquet") as hits_tmp:
        writer = pq.ParquetWriter(hits_tmp, HITS_SCHEMA, **parquet_options(HITS_SCHEMA))

        def write(table: pa.Table, last: bool) -> None:
            writer.write_table(conform(table, HITS_SCHEMA, "hits"))
            if last:  # the last file's verification still runs: finish and hash the hits file meanwhile
                writer.close()
                digest.append(sha256_file(hits_tmp))

        try:
            for k, path in enumerate(paths):
                agg, hits = _ingest_file(path, functools.partial(write, last=k == len(paths) - 1))
                aggs.append(agg)
                n_hits += hits.num_rows
        finally:
            writer.close()
        agg_t = conform(_combine(aggs), AGG_SCHEMA, "agg")
    return agg_t, ParquetFile(hits_path, digest[0], n_hits)  # every path's last file calls write(last=True)
