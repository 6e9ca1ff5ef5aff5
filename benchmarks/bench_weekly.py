"""Weekly-run benchmark (issue 8, row 8): what `make demo` runs (`lens-eval run --with-lvm`:
the weekly chain, `lens_assets.run.run_weekly`, then the LVM group, `lvm_assets.run.run_lvm`)
in one subprocess (`peers/weekly_worker.py`), cold then warm: wall time and peak RSS of the
process, and per step (every Dagster run the worker launched, from the instance's step stats)
its wall time and peak RSS (a sampler thread in the worker).

Cold: a fresh data dir, Dagster home and caches (corpus, index, HNSW, the engine, the LVM's
vectors and checkpoints are rebuilt), seeded only with the MiniLM embedding store (the product
cache's for the first pair, when there is one; the previous pair's for later ones): embedding
4,200 functions on 2 cores takes minutes. Warm: the same command again on that data dir and
Dagster home.

Full size: the reference engine over HTTP (`DATA_SOURCE=local`, as make demo) with the demo's
queries per suite, the weekly chain and the LVM group. Smoke: the simulator, 10 queries per
suite, the weekly chain only (`--no-lvm`: the LVM's cold run alone took ~170 s on 2 cores).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH, PY, last_json, repeat, row, run_proc, sub_env

SIZES = {
    "smoke": {"qps": 10, "budget_s": 0.0, "source": "sim", "lvm": False},
    "full": {"qps": 0, "budget_s": 1000.0, "source": "local", "lvm": True},
}
EMBEDDINGS_STORE = "embeddings-all-MiniLM-L6-v2.sqlite"
PARTITION = "2026-01-04"


def _once(data: Path, home: Path, qps: int, source: str = "sim", lvm: bool = True) -> dict[str, Any]:
    env = sub_env(LENS_DATA_DIR=str(data), DAGSTER_HOME=str(home), DATA_SOURCE=source)
    env.pop("LENS_CACHE_DIR", None)  # the data dir's own cache: cold means cold
    r = run_proc(
        [PY, BENCH / "peers" / "weekly_worker.py", PARTITION, str(qps), *([] if lvm else ["--no-lvm"])],
        env=env,
        timeout_s=1500,
    )
    out = last_json(r["stdout"])
    # the worker's sampler resets the kernel's high-water mark, so its own largest sample is the
    # process's peak (run_proc's ru_maxrss then only covers the last 10 ms interval and start-up)
    out.update(process_wall_s=r["wall_s"], rss_mb=max(r["rss_mb"], out.get("peak_rss_mb") or 0.0))
    return out


def _med(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def run(size: str = "smoke", repeats: int = 3) -> dict[str, Any]:
    cfg = SIZES[size]
    cold, warm = [], []
    tmp_root = Path(tempfile.mkdtemp(prefix="lens-bench-weekly-"))
    seeds: list[str] = []
    try:
        from lens_core.common.settings import cache_dir

        seed = cache_dir() / EMBEDDINGS_STORE

        def pair():
            nonlocal seed
            d = Path(tempfile.mkdtemp(dir=tmp_root))
            if cfg["source"] == "local" and seed.is_file():
                (d / "data" / "cache").mkdir(parents=True)
                shutil.copy2(seed, d / "data" / "cache" / EMBEDDINGS_STORE)
                seeds.append(f"{seed.stat().st_size / 1e6:,.1f} MB")
            else:
                seeds.append("none")
            c = _once(d / "data", d / "dagster_home", cfg["qps"], cfg["source"], cfg["lvm"])
            w = _once(d / "data", d / "dagster_home", cfg["qps"], cfg["source"], cfg["lvm"])
            cold.append(c)
            warm.append(w)
            # the next pair is seeded with every embedding this one computed (the LVM corpus's
            # too, which the product's cache lacks until an LVM run), so its cold run rebuilds
            # everything else but embeds nothing
            store = d / "data" / "cache" / EMBEDDINGS_STORE
            if cfg["source"] == "local" and store.is_file():
                seed = tmp_root / EMBEDDINGS_STORE
                shutil.copy2(store, seed)
            shutil.rmtree(d, ignore_errors=True)
            return {"seconds": c["process_wall_s"] + w["process_wall_s"]}

        repeat(pair, repeats, max_total_s=cfg["budget_s"] or None)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    rows = [
        row("weekly run, cold: wall", [r["process_wall_s"] for r in cold], target="info"),
        row("weekly run, warm: wall", [r["process_wall_s"] for r in warm], target="info"),
        row(
            "weekly run: peak RSS",
            [max(c["rss_mb"], w["rss_mb"]) for c, w in zip(cold, warm)],
            unit="MB",
            target="info",
        ),
    ]
    steps = sorted(
        {k for r in cold + warm for k in r["steps"]},
        key=lambda k: -(_med([r["steps"][k]["s"] for r in cold if k in r["steps"]]) or 0.0),
    )
    lines = ["| step | cold s | cold peak RSS MB | warm s | warm peak RSS MB |", "| --- | --- | --- | --- | --- |"]
    for k in steps:
        c = [r["steps"][k] for r in cold if k in r["steps"]]
        w = [r["steps"][k] for r in warm if k in r["steps"]]
        lines.append(
            f"| {k} | {_fmt(_med([x['s'] for x in c]), '.2f')} | {_fmt(_med([x['rss_mb'] for x in c]), ',.0f')} "
            f"| {_fmt(_med([x['s'] for x in w]), '.2f')} | {_fmt(_med([x['rss_mb'] for x in w]), ',.0f')} |"
        )
    qps = cfg["qps"] or "config default"
    src = (
        "the reference engine over HTTP (DATA_SOURCE=local, as make demo)"
        if cfg["source"] == "local"
        else "simulator source"
    )
    what = (
        "the weekly chain then the LVM group, in one process (as `lens-eval run --with-lvm`, make demo)"
        if cfg["lvm"]
        else "the weekly chain only, in one process (smoke size: the LVM group of make demo is "
        "left out, its cold run alone takes minutes; the full size runs it)"
    )
    seeded = (
        f"seeded only with the MiniLM embedding store ({', '.join(seeds)}: the first from the product's cache, "
        "each later one from the previous pair's)"
        if cfg["source"] == "local"
        else "nothing seeded (the full size seeds only the MiniLM embedding store; the simulator source at "
        "smoke size has nothing to embed)"
    )
    notes = [
        f"Partition {PARTITION}, {src}, queries per suite: {qps}, {what}; {len(cold)} cold+warm pair(s) "
        "(fewer than the requested repeats when a pair exceeds the time budget). Cold: a fresh data dir, "
        f"Dagster home and caches, {seeded}; warm: the same command again on that data dir and Dagster home. "
        "Wall: the whole process (start-up and imports included). "
        f"Peak RSS of the whole process: cold {max(r['rss_mb'] for r in cold):,.0f} MB, warm "
        f"{max(r['rss_mb'] for r in warm):,.0f} MB. "
        "Cold wall per pair: " + ", ".join(f"{r['process_wall_s']:.0f} s" for r in cold) + ". "
        f"Outcome: success={cold[0]['success']}, published={cold[0]['published']}"
        + (f", errors {cold[0]['errors']}" if cold[0]["errors"] else "")
        + ".",
        f"Per step (medians over the pairs): wall time from the Dagster instance's step stats; peak RSS of the "
        f"process while the step ran ({cold[0]['rss_method']}; steps run one at a time in-process, so the "
        "figure includes what earlier steps left allocated):\n\n" + "\n".join(lines),
    ]
    return {
        "name": "weekly",
        "title": "Weekly run (make demo): cold and warm",
        "rows": rows,
        "notes": notes,
        "profile": None,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "smoke", 1), indent=1, default=str))
