"""Raw runs: the NDJSON files every data source writes, one assembled record per query.

Layout: `$LENS_DATA_DIR/runs/<env>/<run_id>/<system>.ndjson`. Each line is a record with the
fields of `contracts.RAW_RECORD_SCHEMA`; the last line is the trailer
`{"type": "done", "records": N}` so that a truncated file (a stream with no `done`) is told
apart from a short run. Files are written atomically and their sha256 recorded.

`RawRunWriter` streams a file record by record (the interleaved collection writes every system's
file as its records become contiguous, so no run is held in memory whole); `write_raw_run` is
the same writer over an iterable. Either way the file appears under its name only when complete
(a temporary name beside it, then one rename: `hashing.atomic_path`). With an `s3://` data dir the
committed file is then uploaded whole to its object, its sha256 recorded with it (`objectstore`).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from sys import exc_info as sys_exc_info
from typing import Any, Iterable

from lens_core.common import objectstore
from lens_core.common.contracts import RAW_TRAILER_TYPE
from lens_core.common.hashing import atomic_path, sha256_file
from lens_core.common.systems import check_safe_name

RECORD_KEYS: tuple[str, ...] = (
    "run_id",
    "system",
    "cfg_hash",
    "qid",
    "suite",
    "intent",
    "language",
    "req_ts",
    "sla_ms",
    "lat_ms",
    "hits",
    "shards",
    "cost",
    "error",
)


def run_dir(root: Path, env: str, run_id: str) -> Path:
    """`root/runs/<env>/<run_id>`; both names must be path-safe (never a way out of root)."""
    return Path(root) / "runs" / check_safe_name(env, "run env") / check_safe_name(run_id, "run id")


def raw_run_path(root: Path, env: str, run_id: str, system: str) -> Path:
    return run_dir(root, env, run_id) / f"{check_safe_name(system, 'system name')}.ndjson"


def encode_record(record: dict[str, Any]) -> str:
    """One record as a JSON line with a fixed key order (byte-stable for the same input)."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"raw-run record for qid={record.get('qid')!r} lacks field(s) {missing}")
    ordered = {k: record[k] for k in RECORD_KEYS}
    for k in ("lat_ms", "req_ts", "sla_ms"):
        v = ordered[k]
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"raw-run record qid={record.get('qid')!r}: {k} is {v}")
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class RawRunWriter:
    """One raw-run file written record by record: `write()` each record in order, then
    `commit()` (trailer, rename into place, sha256) or `abort()` (the temporary file is removed,
    an earlier file of the same name is left as it was). Usable as a context manager: an
    exception inside the block aborts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        try:
            self._f = self._stack.enter_context(open(tmp, "w", encoding="utf-8", newline="\n"))
        except BaseException:
            self._stack.__exit__(*sys_exc_info())
            raise
        self._open = True

    def write(self, record: dict[str, Any]) -> None:
        if not self._open:
            raise ValueError(f"raw-run writer for {self.path.name} is closed")
        line = encode_record(record)
        self._f.write(line)
        self._f.write("\n")
        self.records += 1

    def commit(self) -> dict[str, Any]:
        """Write the trailer and put the file in place; return {path, sha256, records}."""
        if not self._open:
            raise ValueError(f"raw-run writer for {self.path.name} is closed")
        self._open = False
        try:
            self._f.write(json.dumps({"type": RAW_TRAILER_TYPE, "records": self.records}, separators=(",", ":")))
            self._f.write("\n")
        except BaseException:
            self._stack.__exit__(*sys_exc_info())
            raise
        self._stack.close()  # closes the file, then renames it into place
        sha = sha256_file(self.path)
        objectstore.commit_file(self.path, sha)  # with an s3:// data dir: the object, its sha256 recorded
        return {"path": str(self.path), "sha256": sha, "records": self.records}

    def abort(self) -> None:
        """Drop the temporary file (idempotent; a no-op after commit)."""
        if self._open:
            self._open = False
            err = RuntimeError(f"raw run {self.path.name} aborted")
            self._stack.__exit__(RuntimeError, err, None)

    def __enter__(self) -> "RawRunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.commit()


def write_raw_run(path: Path, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write records plus the trailer atomically; return {path, sha256, records}."""
    writer = RawRunWriter(path)
    try:
        for rec in records:
            writer.write(rec)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()
