"""Weekly-run benchmark (issue 8, row 8): the `make demo` chain (`lens_assets.run.run_weekly`,
what `python -m lens_core.cli run` calls) in a subprocess, cold (fresh data dir, Dagster home
and caches) and warm (again on the same data dir), wall time and peak RSS of the process, and
per-step wall time read from the Dagster instance's step stats.

Full size: what `make demo` runs, the reference engine over HTTP (`DATA_SOURCE=local`) with the
demo's queries per suite. "Cold" gets a fresh cache directory (corpus, index, HNSW and the
engine are rebuilt) seeded only with the MiniLM vector store of the product's cache when there
is one: embedding 4,200 functions on 2 cores takes minutes and is measured once by the cold
`make demo` itself. Smoke: the simulator, 10 queries per suite.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH, PY, last_json, repeat, row, run_proc, sub_env

SIZES = {"smoke": {"qps": 10, "budget_s": 0.0, "source": "sim"},
         "full": {"qps": 0, "budget_s": 900.0, "source": "local"}}
EMBEDDINGS_STORE = "embeddings-all-MiniLM-L6-v2.sqlite"
PARTITION = "2026-01-04"


def _once(data: Path, home: Path, qps: int, source: str = "sim") -> dict[str, Any]:
    env = sub_env(LENS_DATA_DIR=str(data), DAGSTER_HOME=str(home), DATA_SOURCE=source)
    env.pop("LENS_CACHE_DIR", None)  # the data dir's own cache: cold means cold
    r = run_proc([PY, BENCH / "peers" / "weekly_worker.py", PARTITION, str(qps)], env=env, timeout_s=1200)
    out = last_json(r["stdout"])
    out.update(process_wall_s=r["wall_s"], rss_mb=r["rss_mb"])
    return out


def run(size: str = "smoke", repeats: int = 3) -> dict[str, Any]:
    cfg = SIZES[size]
    cold, warm = [], []
    tmp_root = Path(tempfile.mkdtemp(prefix="lens-bench-weekly-"))
    try:
        def pair():
            d = Path(tempfile.mkdtemp(dir=tmp_root))
            if cfg["source"] == "local":
                from lens_core.settings import cache_dir

                store = cache_dir() / EMBEDDINGS_STORE
                if store.is_file():
                    (d / "data" / "cache").mkdir(parents=True)
                    shutil.copy2(store, d / "data" / "cache" / EMBEDDINGS_STORE)
            c = _once(d / "data", d / "dagster_home", cfg["qps"], cfg["source"])
            w = _once(d / "data", d / "dagster_home", cfg["qps"], cfg["source"])
            cold.append(c)
            warm.append(w)
            shutil.rmtree(d, ignore_errors=True)
            return {"seconds": c["process_wall_s"] + w["process_wall_s"]}

        repeat(pair, repeats, max_total_s=cfg["budget_s"] or None)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    rows = [
        row("weekly run, cold: wall", [r["process_wall_s"] for r in cold], target="info"),
        row("weekly run, warm: wall", [r["process_wall_s"] for r in warm], target="info"),
        row("weekly run: peak RSS", [max(c["rss_mb"], w["rss_mb"]) for c, w in zip(cold, warm)], unit="MB",
            target="info"),
    ]
    steps = sorted({k for r in cold + warm for k in r["steps"]}, key=lambda k: -statistics.median(
        [r["steps"].get(k, 0.0) for r in cold]))
    lines = ["| step | cold s (median) | warm s (median) |", "| --- | --- | --- |"]
    for k in steps:
        c = [r["steps"][k] for r in cold if k in r["steps"]]
        w = [r["steps"][k] for r in warm if k in r["steps"]]
        lines.append(f"| {k} | {statistics.median(c):.2f} | {statistics.median(w):.2f} |" if c and w else
                     f"| {k} | {statistics.median(c) if c else float('nan'):.2f} | {statistics.median(w) if w else float('nan'):.2f} |")
    qps = cfg["qps"] or "config default"
    src = ("the reference engine over HTTP (DATA_SOURCE=local, as make demo)" if cfg["source"] == "local"
           else "simulator source")
    notes = [f"Partition {PARTITION}, {src}, queries per suite: {qps}; {len(cold)} cold+warm pair(s) "
             f"(the weekly chain is run fewer than the requested repeats when one pair exceeds the time budget). "
             f"Peak RSS: cold {max(r['rss_mb'] for r in cold):,.0f} MB, warm {max(r['rss_mb'] for r in warm):,.0f} MB "
             "(whole process; steps run in-process, so RSS per step is not separable). "
             f"Outcome: success={cold[0]['success']}, published={cold[0]['published']}"
             + (f", errors {cold[0]['errors']}" if cold[0]["errors"] else "") + ".",
             "Per-step wall time from the Dagster instance's step stats:\n\n" + "\n".join(lines)]
    return {"name": "weekly", "title": "Weekly run (make demo): cold and warm", "rows": rows, "notes": notes,
            "profile": None}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "smoke", 1), indent=1, default=str))
