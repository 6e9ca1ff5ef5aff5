"""The weekly chain at scale (issue 22 item 1): wall time and peak RSS of the whole chain and of
each step, on the simulator source, cold (fresh data dir and Dagster home), in ONE process (the
in-process executor: every step's memory in the same process, the strictest measure; the
multiprocess executor only lowers it).

    python -m benchmarks.bench_seed_scale [--queries-per-suite N] [--full-grids] [--out FILE] [--keep DIR]

The seed's scale is `--queries-per-suite 16256 --full-grids` (48,768 queries, 32 systems: the
SPEC §8 grids' 29 variants, the baseline, its A/A twin and the tail arm; k = 50). The issue's
targets there: peak RSS <= 6 GB and wall time without the simulator's own generation (the
`raw_runs.collect_systems[...]` steps) <= 30 min on 2 cores.

Prints a markdown table (step, wall s, peak RSS MB over the step) and one JSON line: the worker's
output (`benchmarks/peers/weekly_worker.py`: per-step wall and RSS from a 10 ms VmHWM sampler)
plus the sums. The rows of mapped steps (`raw_runs.collect_systems[<system>]`,
`agg_and_hits.ingest_system[<system>]`) are summed per op as well.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import BENCH, PY, last_json, run_proc, scale_env

PARTITION = "2026-11-29"
GENERATION = re.compile(r"^raw_runs\.collect_systems\[")


def measure(queries_per_suite: int, full_grids: bool, keep: Path | None = None) -> dict:
    root = Path(tempfile.mkdtemp(prefix="lens-bench-scale-"))
    try:
        env = scale_env(root, full_grids)
        (root / "home").mkdir()
        r = run_proc(
            [PY, BENCH / "peers" / "weekly_worker.py", PARTITION, str(queries_per_suite), "--no-lvm"],
            env=env,
            timeout_s=4 * 3600,
        )
        out = last_json(r["stdout"])
        out.update(process_wall_s=r["wall_s"], rss_mb=max(r["rss_mb"], out.get("peak_rss_mb") or 0.0))
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.move(str(root), keep)
    steps = out.get("steps", {})
    gen = sum(v["s"] for k, v in steps.items() if GENERATION.match(k))
    out["generation_s"] = gen
    out["chain_without_generation_s"] = out["wall_s"] - gen
    out["queries_per_suite"] = queries_per_suite
    out["full_grids"] = full_grids
    return out


def table(out: dict) -> str:
    steps = out.get("steps", {})
    lines = ["| step | wall s | peak RSS MB |", "| --- | ---: | ---: |"]
    mapped: dict[str, list] = {}
    for k, v in steps.items():
        m = re.match(r"^(.+)\[.+\]$", k)
        if m:
            mapped.setdefault(m.group(1), []).append(v)
            continue
        lines.append(f"| {k} | {v['s']:.1f} | {v['rss_mb'] or 0:,.0f} |")
    for op, vs in mapped.items():
        lines.append(
            f"| {op}[×{len(vs)}] (sum; largest RSS) | {sum(v['s'] for v in vs):.1f} | "
            f"{max((v['rss_mb'] or 0) for v in vs):,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries-per-suite", type=int, default=16256)
    ap.add_argument("--full-grids", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--keep", type=Path, default=None, help="keep the data dir and Dagster home here (a new path)")
    a = ap.parse_args()
    out = measure(a.queries_per_suite, a.full_grids, keep=a.keep)
    print(table(out))
    print(
        f"\nwall {out['wall_s']:.0f} s (generation {out['generation_s']:.0f} s, the rest "
        f"{out['chain_without_generation_s']:.0f} s), peak RSS {out['rss_mb']:,.0f} MB, success {out['success']}, "
        f"published {out['published']}"
    )
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "steps"}))


if __name__ == "__main__":
    main()
