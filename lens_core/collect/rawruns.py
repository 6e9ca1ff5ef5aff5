"""Raw runs: the NDJSON files every data source writes, one assembled record per query.

Layout: `$LENS_DATA_DIR/runs/<env>/<run_id>/<system>.ndjson`. Each line is a record with the
fields of `contracts.RAW_RECORD_SCHEMA`; the last line is the trailer
`{"type": "done", "records": N}` so that a truncated file (a stream with no `done`) is told
apart from a short run. Files are written atomically and their sha256 recorded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

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


def write_raw_run(path: Path, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write records plus the trailer atomically; return {path, sha256, records}."""
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for rec in records:
                f.write(encode_record(rec))
                f.write("\n")
                n += 1
            f.write(json.dumps({"type": RAW_TRAILER_TYPE, "records": n}, separators=(",", ":")))
            f.write("\n")
    return {"path": str(path), "sha256": sha256_file(path), "records": n}
