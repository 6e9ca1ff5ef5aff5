"""Calibrator apply latency per query (SPEC §6: p99 of applying to one query's hits < 1 ms).

Fits real isotonic calibrators on simulated labelled hits (several systems × intents ×
languages, so breakpoint counts are realistic), then times, query by query, (a) applying one
cell's `Calibrator` to the query's 50 raw scores and (b) the serving path
`CalibratorSet.apply(system, intent, language, scores)` (cell lookup with backoff + interp).
Prints p50 / p99 / max per query in microseconds; exits 1 when a p99 reaches the budget.

    python benchmarks/bench_calibration_apply.py            # 50,000 queries
    python benchmarks/bench_calibration_apply.py --smoke    # 2,000 queries, a few seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lens_core.calibrate.calibration import fit_cells  # noqa: E402

SYSTEMS = ("lens_v22", "lexical_pack_a_1")
INTENTS = ("nl", "identifier", "structural")
LANGUAGES = ("python", "go", "typescript", "rust")


def simulated_labels(rng: np.random.Generator, hits_per_cell: int) -> pl.DataFrame:
    frames = []
    for s in SYSTEMS:
        for i in INTENTS:
            for lang in LANGUAGES:
                score = rng.gamma(2.0, 4.0, hits_per_cell)
                p = 1.0 / (1.0 + np.exp(-(score - 12.0) / 2.0))
                frames.append(
                    pl.DataFrame(
                        {
                            "system": s,
                            "intent": i,
                            "language": lang,
                            "qid": np.char.add(f"{i}-{lang}-", (np.arange(hits_per_cell) // 50).astype(str)),
                            "score": score,
                            "label": (rng.random(hits_per_cell) < p).astype(np.int8),
                        }
                    )
                )
    return pl.concat(frames)


def percentiles(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
        "mean_us": float(us.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2,000 queries (quick check)")
    ap.add_argument("--queries", type=int, default=None, help="queries to time (default 50,000)")
    ap.add_argument("--hits", type=int, default=50, help="hits per query (default 50)")
    ap.add_argument("--budget-ms", type=float, default=1.0, help="p99 budget per query")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="also print one JSON line of results")
    args = ap.parse_args(argv)
    n_q = args.queries or (2_000 if args.smoke else 50_000)
    rng = np.random.default_rng(args.seed)

    cals = fit_cells(simulated_labels(rng, 1_500 if args.smoke else 6_000))
    cells = sorted(cals.cells)
    n_bp = [c.x.size for c in cals.calibrators.values()]
    scores = rng.gamma(2.0, 4.0, (n_q, args.hits))
    which = rng.integers(0, len(cells), n_q)
    for _ in range(200):  # warm-up
        cals.apply(*cells[0], scores[0])

    direct = np.empty(n_q, dtype=np.int64)
    served = np.empty(n_q, dtype=np.int64)
    clock = time.perf_counter_ns
    for q in range(n_q):  # per-query timing is the point of the benchmark
        cell = cells[which[q]]
        cal = cals.calibrators[cals.cells[cell]]
        t0 = clock()
        cal.apply(scores[q])
        t1 = clock()
        cals.apply(cell[0], cell[1], cell[2], scores[q])
        t2 = clock()
        direct[q] = t1 - t0
        served[q] = t2 - t1

    res = {
        "queries": n_q,
        "hits_per_query": args.hits,
        "calibrators": len(cals.calibrators),
        "breakpoints_median": int(np.median(n_bp)),
        "breakpoints_max": int(max(n_bp)),
        "calibrator.apply": percentiles(direct),
        "set.apply (lookup+apply)": percentiles(served),
        "budget_ms": args.budget_ms,
    }
    print(
        f"calibrator apply latency: {n_q} queries x {args.hits} hits, "
        f"{len(cals.calibrators)} calibrators, breakpoints median {res['breakpoints_median']} "
        f"max {res['breakpoints_max']}"
    )
    print(f"{'path':<28}{'p50 us':>10}{'p99 us':>10}{'max us':>10}{'mean us':>10}")
    ok = True
    for name in ("calibrator.apply", "set.apply (lookup+apply)"):
        r = res[name]
        print(f"{name:<28}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}{r['max_us']:>10.1f}{r['mean_us']:>10.1f}")
        ok &= r["p99_us"] < args.budget_ms * 1e3
    print(f"p99 budget {args.budget_ms} ms: {'PASS' if ok else 'FAIL'}")
    if args.json:
        print(json.dumps(res, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
