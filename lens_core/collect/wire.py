"""The checks on one endpoint answer (SPEC §2 wire format), before it becomes a raw-run record.

Pure functions; no I/O. Every check raises `BadAnswer` whose message is the reason recorded on
the query (`error`): the query then fails alone (scored 0, counted, never dropped, SPEC §4) and
the run goes on for every other query and system. Two families:

* `bad_line:<n>:<what>`: the line is not what the wire format says (not JSON, not an object,
  a field missing or of the wrong JSON type). `n` is the 1-based line of the response.
* `bad_value:<n>:<what>`: the field is there with the right type but an invalid value: a
  non-finite number (NaN, Infinity, -Infinity, or a literal too large for a double), a rank
  outside 1..2^31-1 or repeated within the answer, a line outside 1..2^31-1 or start_line >
  end_line, an empty repo/path/probe_id, a negative latency/cost, a string that is
  not valid UTF-8 (a lone surrogate from a `\\ud800` escape), a line that is not UTF-8 at all.

Bounds are those of the raw-run and canonical schemas (`contracts.HIT_STRUCT` and friends hold
ranks, lines, shards and probes as int32): a value that passes here is stored as it came.
`record_problem()` is the last line of defence: a finished record that would not encode as the
raw-run writer encodes it names its problem instead of aborting the file.
"""

from __future__ import annotations

import math
from typing import Any

from lens_core.collect.rawruns import encode_record
from lens_core.common.contracts import (
    COST_FIELD_TYPES,
    SHARD_FIELD_TYPES,
    SHARD_STATUSES,
    WHY_REASONS,
    WIRE_DONE_FIELDS,
    WIRE_HIT_FIELDS,
)
from lens_core.common.validate import WHY_UNKNOWN

INT32_MAX = 2**31 - 1


class BadAnswer(Exception):
    """One invalid line or value in an endpoint answer; the message is the recorded reason."""


def type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def is_type(v: Any, types: type | tuple[type, ...]) -> bool:
    if isinstance(v, bool):  # JSON true/false are not numbers here
        return bool in (types if isinstance(types, tuple) else (types,))
    return isinstance(v, types)


def decode_line(raw: bytes, n: int) -> str:
    """A response line as text; a line that is not UTF-8 is a bad value (not 'not JSON')."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadAnswer(f"bad_value:{n}:not UTF-8 (byte {e.start + 1})") from None


def _fields(obj: dict[str, Any], spec: dict[str, Any], n: int, prefix: str = "") -> None:
    for field, types in spec.items():
        if field not in obj:
            raise BadAnswer(f"bad_line:{n}:missing {prefix}{field}")
        if not is_type(obj[field], types):
            raise BadAnswer(f"bad_line:{n}:{prefix}{field} is {type_name(obj[field])}")


def _text(v: str, n: int, field: str, *, empty_ok: bool = False) -> str:
    if not empty_ok and not v.strip():
        raise BadAnswer(f"bad_value:{n}:{field} is empty")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise BadAnswer(f"bad_value:{n}:{field} is not valid UTF-8 (lone surrogate)") from None
    if "\x00" in v:
        raise BadAnswer(f"bad_value:{n}:{field} contains NUL")
    return v


def _finite(v: Any, n: int, field: str, *, minimum: float | None = None) -> float:
    try:
        x = float(v)
    except OverflowError:  # an int too large for a double
        raise BadAnswer(f"bad_value:{n}:{field} is out of range") from None
    if not math.isfinite(x):
        raise BadAnswer(f"bad_value:{n}:{field} is {x}")
    if minimum is not None and x < minimum:
        raise BadAnswer(f"bad_value:{n}:{field} is {x:g} (< {minimum:g})")
    return x


def _int(v: int, n: int, field: str, lo: int, hi: int = INT32_MAX) -> int:
    if not lo <= v <= hi:
        shown = str(v) if abs(v) < 10**20 else f"{str(v)[:12]}... ({len(str(abs(v)))} digits)"
        raise BadAnswer(f"bad_value:{n}:{field} {shown} outside {lo}..{hi}")
    return int(v)


def check_hit(obj: dict[str, Any], n: int) -> dict[str, Any]:
    """One `{"type":"hit"}` line -> the raw-run hit (`contracts.HIT_FIELD_TYPES`)."""
    _fields(obj, WIRE_HIT_FIELDS, n)
    why = obj["why"]
    if not why or any(not isinstance(w, str) or w not in WHY_REASONS for w in why):
        raise BadAnswer(f"bad_line:{n}:why must be a non-empty subset of {list(WHY_REASONS)}")
    rank = _int(obj["rank"], n, "rank", 1)
    start = _int(obj["start_line"], n, "start_line", 1)
    end = _int(obj["end_line"], n, "end_line", 1)
    if end < start:
        raise BadAnswer(f"bad_value:{n}:start_line {start} > end_line {end}")
    shard = obj.get("shard")
    if shard is not None:
        if not is_type(shard, int):
            raise BadAnswer(f"bad_line:{n}:shard is {type_name(shard)}")
        shard = _int(shard, n, "shard", 0)
    return {
        "rank": rank,
        "repo": _text(obj["repo"], n, "repo"),
        "path": _text(obj["path"], n, "path"),
        "start_line": start,
        "end_line": end,
        "score": _finite(obj["score"], n, "score"),
        "why": list(why),
        "shard": shard,
    }


def check_unique_ranks(hits: list[dict[str, Any]], lines: list[int]) -> None:
    """Ranks are unique within one answer (SPEC §4 takes rankings in `rank` order)."""
    seen: dict[int, int] = {}
    for h, n in zip(hits, lines):
        if h["rank"] in seen:
            raise BadAnswer(f"bad_value:{n}:rank {h['rank']} repeats line {seen[h['rank']]}")
        seen[h["rank"]] = n


def check_done(obj: dict[str, Any], n: int) -> dict[str, Any]:
    """The `{"type":"done"}` line -> lat_ms, cfg_hash, shards and cost of the raw record."""
    _fields(obj, WIRE_DONE_FIELDS, n)
    lat_ms = _finite(obj["lat_ms"], n, "lat_ms", minimum=0.0)
    shards = []
    for i, s in enumerate(obj["shards"]):
        where = f"shards[{i}]."
        if not isinstance(s, dict):
            raise BadAnswer(f"bad_line:{n}:shards[{i}] is {type_name(s)}")
        _fields(s, SHARD_FIELD_TYPES, n, where)
        if s["status"] not in SHARD_STATUSES:
            raise BadAnswer(f"bad_line:{n}:{where}status {str(s['status'])[:40]!r}")
        shards.append(
            {
                "shard": _int(s["shard"], n, where + "shard", 0),
                "probe_id": _text(s["probe_id"], n, where + "probe_id"),
                "issued_ts": _finite(s["issued_ts"], n, where + "issued_ts", minimum=0.0),
                **{
                    k: (None if s[k] is None else _finite(s[k], n, where + k, minimum=0.0))
                    for k in ("first_byte_ts", "done_ts", "cancel_ts")
                },
                "status": s["status"],
            }
        )
    cost = obj["cost"]
    _fields(cost, COST_FIELD_TYPES, n, "cost.")
    return {
        "lat_ms": lat_ms,
        "cfg_hash": _text(obj["cfg_hash"], n, "cfg_hash", empty_ok=True),  # empty: the caller's cfg_hash
        "shards": shards,
        "cost": {
            "probes": _int(cost["probes"], n, "cost.probes", 0),
            "cpu_ms": _finite(cost["cpu_ms"], n, "cost.cpu_ms", minimum=0.0),
        },
    }


def check_oss_result(r: Any, i: int, repo: str, path_prefix: str = "") -> dict[str, Any]:
    """One `results[i]` of the open-source Lens JSON response -> a one-line span hit ranked
    by position. That shape reports no reasons: `why` is the sentinel `["unknown"]`
    (`validate.WHY_UNKNOWN`; never empty, issue 18); the shard is unknown (None). The repo is the
    result's own `repo`/`repository` when it has one, else `repo`; `path_prefix` is put before
    `file_path` (a server that indexes a subfolder of the repo: `Lib/` + `json/decoder.py`)."""
    if not isinstance(r, dict):
        raise BadAnswer(f"bad_result:{i}:not an object")
    for field, types in (("file_path", str), ("line_number", int)):
        if field not in r:
            raise BadAnswer(f"bad_result:{i}:missing {field}")
        if not is_type(r[field], types):
            raise BadAnswer(f"bad_result:{i}:{field} is {type_name(r[field])}")
    score = r.get("score", 0.0)
    if not is_type(score, (int, float)):
        raise BadAnswer(f"bad_result:{i}:score is {type_name(score)}")
    where = f"result[{i}]"
    line = _int(r["line_number"], 1, f"{where}.line_number", 1)
    rp = r.get("repo") or r.get("repository") or repo
    return {
        "rank": i + 1,
        "repo": _text(str(rp), 1, f"{where}.repo"),
        "path": _text(path_prefix + _text(r["file_path"], 1, f"{where}.file_path"), 1, f"{where}.file_path"),
        "start_line": line,
        "end_line": line,
        "score": _finite(score, 1, f"{where}.score"),
        "why": [WHY_UNKNOWN],
        "shard": None,
    }


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a finished raw-run record would not be written as it is (None when it would):
    exactly the raw-run writer's encoding, then UTF-8."""
    try:
        encode_record(record).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, OverflowError, RecursionError) as e:
        return f"bad_value:record:{type(e).__name__}: {str(e)[:160]}"
    return None
