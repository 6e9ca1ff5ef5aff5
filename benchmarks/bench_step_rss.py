"""Each step of the weekly chain in a process of its own (issue 22 item 1): what the
multiprocess executor (or a celery worker) needs per step, without what earlier steps left
allocated in a shared process.

    python -m benchmarks.bench_step_rss DIR [--partition P] [--steps a,b,...] [--out FILE]

DIR is a data dir and Dagster home kept by `python -m benchmarks.bench_seed_scale --keep DIR`
(`DIR/data`, `DIR/home`): the week's upstream tables are already there. Each step (an asset
key; a multi-asset by all its keys joined with '+') is materialised for the partition with
`dagster asset materialize` in a fresh process, on the same simulator source and grids the
kept run used; its wall time and the process's own peak RSS (`wait4`) are reported, imports
and Dagster's start-up included (~250 MB, ~5 s). `dagster asset materialize` runs the asset
checks of the selected assets too, each in a subprocess of its own; the peak (`wait4`: the
largest process of the tree) is then the larger of the step and its checks (the data tests'
DuckDB is capped by `LENS_DUCKDB_MEMORY`, default 2GB). The tables it rewrites are the same ones,
from the same inputs (the chain is deterministic).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import PY, REPO, run_proc, scale_env

# the weekly chain's steps after ingestion, in order (the multi-assets by all their keys)
STEPS = (
    "pool",
    "qrels+pool_counts",
    "judging_queue",
    "calibration+calibration_parity",
    "per_query",
    "comparisons",
    "scores",
    "gate_summary",
    "promotion_rules+heroes",
    "canary_steps+canary_windows+canary_decisions",
    "release_bundle",
)


def measure(root: Path, partition: str, steps: list[str], full_grids: bool) -> list[dict]:
    env = scale_env(root, full_grids)
    rows = []
    for step in steps:
        sel = ",".join(step.split("+"))
        r = run_proc(
            [PY, "-m", "dagster", "asset", "materialize", "-f", str(REPO / "definitions.py"), "-d", str(REPO)]
            + ["--select", sel, "--partition", partition],
            env=env,
            timeout_s=3 * 3600,
        )
        rows.append({"step": step, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "rss_mb": r["rss_mb"]})
        print(f"| {step} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rss_mb']:,.0f} |", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--partition", default="2026-11-29")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--full-grids", action="store_true", help="the kept run used --full-grids")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    print("| step (own process) | wall s | CPU s | peak RSS MB |\n| --- | ---: | ---: | ---: |", flush=True)
    rows = measure(a.dir, a.partition, a.steps.split(","), a.full_grids)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    print(json.dumps({"peak_rss_mb": max(r["rss_mb"] for r in rows), "steps": len(rows)}))


if __name__ == "__main__":
    main()
