"""Ingest benchmark (issue 8, row 4): the scoring workload's first system as one raw-run
NDJSON file (about 0.74 GB at full size) -> agg + hits Parquet.

Ours: `lens_core.ingest.ndjson.ingest_to_parquet`, what the weekly chain's `agg_and_hits` asset runs
(the C scanner `lens_core.ingest._canonscan` parses and validates the canonical lines in ranges, one
thread per core, while the file is hashed; without it, or for a file it declines, DuckDB's
typed scan certified by an RE2 check, else the exact pyarrow + line validator path; derived
SLA/shard/why columns, schema guard; hits encoded to Parquet while the file is still hashed,
both tables atomic, zstd, `tables.write_parquet`'s options). Peers: the stdlib `json` line
loop + pyarrow write (no validation, fewer derived columns), and the pyarrow floor (`pyarrow.json.read_json` + flatten + write). Each runs in
its own process, timed inside it after imports; peak RSS per process.
Targets: >= 4× faster than the stdlib path; within 1.5× of the pyarrow floor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH, PY, last_json, profile_subprocess, repeat, row, run_proc
from benchmarks.workloads import raw_run_workload

SIZES = {"smoke": {"queries": 300, "budget_s": None}, "full": {"queries": 48_768, "budget_s": 150.0}}
WORKER = BENCH / "peers" / "ingest_worker.py"


def _run(mode: str, src: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"lens-bench-ingest-{mode}-") as td:
        r = run_proc([PY, WORKER, mode, src, td])
    out = last_json(r["stdout"])
    out["rss_mb"] = r["rss_mb"]
    return out


# The phase that runs only when its path's parse was accepted, per fast path (`_parser`).
_ACCEPTED = {
    "C scanner's columns -> Arrow tables": "the C scanner (lens_core.ingest._canonscan)",
    "flatten DuckDB's hits": "RE2 certification + DuckDB",
}


def _parser(phases: list[dict]) -> str:
    """Which path parsed the file in an instrumented run: the last fast path whose tables were
    built, else the exact path."""
    done = [_ACCEPTED[p["phase"]] for p in sorted(phases, key=lambda p: p["start"]) if p["phase"] in _ACCEPTED]
    return done[-1] if done else "the exact path (pyarrow + line validator)"


def _phase_table(src: Path) -> tuple[str, str]:
    """One more run of ours with every phase timed in its thread: a markdown table of where the
    time goes (wall span and CPU seconds per phase, in start order), and which path parsed."""
    r = _run("phases", src)
    lines = [
        f"Where the time goes (one instrumented run of ours, {r['seconds']:.2f} s; phases overlap: the "
        "file's hash runs at a lower priority beside the parse, then beside the main thread's derive and encode):",
        "",
        "| phase | thread | start s | end s | CPU s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in sorted(r["phases"], key=lambda p: p["start"]):
        lines.append(f"| {p['phase']} | {p['thread']} | {p['start']:.2f} | {p['end']:.2f} | {p['cpu']:.2f} |")
    total = sum(p["cpu"] for p in r["phases"])
    duck = any(p["phase"].startswith("DuckDB") for p in r["phases"])
    lines += [
        "",
        f"CPU in the phases: {total:.2f} s on {os.cpu_count()} cores (a floor of {total / (os.cpu_count() or 1):.2f} s "
        "wall for this work however it is scheduled)"
        + (
            "; DuckDB's CPU is its worker threads' and is "
            "counted from the process's CPU time, not the calling thread's."
            if duck
            else "."
        ),
    ]
    return "\n".join(lines), _parser(r["phases"])


def run(size: str = "smoke", repeats: int = 3) -> dict[str, Any]:
    cfg = SIZES[size]
    src = raw_run_workload(cfg["queries"])
    mb = src.stat().st_size / 1e6
    t_ours, r_ours = repeat(lambda: _run("ours", src), repeats, max_total_s=cfg["budget_s"])
    t_std, r_std = repeat(lambda: _run("stdlib", src), repeats, max_total_s=cfg["budget_s"])
    t_pa, r_pa = repeat(lambda: _run("pyarrow", src), repeats, max_total_s=cfg["budget_s"])
    rows = [
        row(
            "ingest NDJSON -> agg + hits Parquet",
            t_ours,
            peer_name="stdlib json loop + pyarrow write",
            peer=t_std,
            target=">= 4× faster",
            kind="speedup",
            threshold=4.0,
        ),
        row(
            "ingest NDJSON -> agg + hits Parquet",
            t_ours,
            peer_name="pyarrow read_json + flatten + write (floor)",
            peer=t_pa,
            target="<= 1.5× the floor",
            kind="within",
            threshold=1.5,
        ),
    ]
    table, parser = _phase_table(src)
    notes = [
        f"Ours parsed with: {parser} (in the instrumented run below).",
        f"Raw-run file: {mb:,.0f} MB, {r_ours[0]['agg_rows']:,} records, {r_ours[0]['hits_rows']:,} hits "
        f"(`{src.parent.name}/{src.name}`).",
        f"Peak RSS: ours {max(r['rss_mb'] for r in r_ours):,.0f} MB, stdlib {max(r['rss_mb'] for r in r_std):,.0f} MB, "
        f"pyarrow floor {max(r['rss_mb'] for r in r_pa):,.0f} MB.",
        f"Throughput: ours {mb / min(t_ours):,.0f} MB/s best run; floor {mb / min(t_pa):,.0f} MB/s; stdlib "
        f"{mb / min(t_std):,.0f} MB/s.",
    ]
    notes.append(table)
    profile = None
    if size == "full" and any(r["holds"] is False for r in rows):
        out = Path(tempfile.mkdtemp(prefix="lens-bench-ingest-prof-"))
        try:
            profile = (
                "ours (lens_core.ingest.ndjson.ingest_to_parquet), cProfile cumulative (main thread only: the per-phase table above shows the threads):\n\n"
                + profile_subprocess([PY, WORKER, "ours", src, out])
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return {
        "name": "ingest",
        "title": "Ingest: raw-run NDJSON -> agg + hits Parquet",
        "rows": rows,
        "notes": notes,
        "profile": profile,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "smoke", 1), indent=1, default=str))
