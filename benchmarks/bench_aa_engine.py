"""A/A false-alarm study on the reference engine (issue 17, item 3).

For each seed the reference engine is started (the `local` data source, the demo's corpus and
suites) with `LENS_ENGINE_STRAGGLER_SEED=<seed>`: its seeded straggler model draws each
system's probe delays independently (the A/A twin is another deployment of the same
configuration). The baseline `lens_v22` and its twin `lens_v22__aa` are collected over HTTP,
interleaved (the weekly run's collection, with the interleaving seed = the seed), and the
chain runs as the weekly run does: ingestion, judging (`codesearchnet`), per-query metrics,
labelled hits, calibration with the twin sharing the baseline's calibrators, the canary stream
and the A/A phase of `run_ladder` (TOST of SLA-Recall@50, confidence and calibrator ms against
their margins, plus the two-consecutive-red-windows rule), and the hero decision's A/A
(`aa_equivalence_per_query`: TOST of SLA-Recall@50 and nDCG@10). A false alarm is a seed on
which either A/A calls the setup broken. The rate is reported with its exact binomial
(Clopper-Pearson) 95% CI; the study holds when the CI's lower bound does not exceed alpha.

    python benchmarks/bench_aa_engine.py [smoke|full]     # LENS_DATA_DIR: where the engine's cache is

smoke: 2 seeds with the suites capped at 60 queries each; full: 20 seeds, the demo's suites
(about 850 queries per system). A full run takes ~15 min on 2 cores.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from scipy import stats as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import row  # noqa: E402
from lens_core.calibrate.calibration import calibrate  # noqa: E402
from lens_core.common.settings import load_config  # noqa: E402
from lens_core.common.systems import baseline  # noqa: E402
from lens_core.decide.canary import CanaryStream, aa_equivalence_per_query, canary_config, run_ladder  # noqa: E402
from lens_core.decide.canary_inputs import build_stream  # noqa: E402
from lens_core.ingest.ndjson import ingest  # noqa: E402
from lens_core.judge.judging import build_pool, judge, label_hits  # noqa: E402
from lens_core.measures.metrics import per_query_metrics  # noqa: E402

SIZES = {"smoke": {"seeds": 2, "caps": "60"}, "full": {"seeds": 20, "caps": None}}
BASE_SEED = 4100


def aa_once(seed: int, caps: str | None) -> dict[str, Any]:
    from resources.data_source import LensDataSource  # the weekly run's data source (local)

    cfg = load_config()
    base = baseline(cfg)
    twin = base.model_copy(update={"name": f"{base.name}__aa", "pack": "aa"})
    os.environ["LENS_ENGINE_STRAGGLER_SEED"] = str(seed)
    src = LensDataSource(source="local", max_per_suite=caps) if caps else LensDataSource(source="local")
    t0 = time.perf_counter()
    try:
        queries, truth = src.suites()
        with tempfile.TemporaryDirectory() as tmp:
            paths = {s.name: Path(tmp) / f"{s.name}.ndjson" for s in (base, twin)}
            info = src.collect_week([base, twin], queries, f"aa-engine-{seed}", 0.0, cfg.run.k, paths)
            agg_t, hits_t = ingest([paths[base.name], paths[twin.name]])
    finally:
        src.close()
    collect_s = time.perf_counter() - t0
    agg, hits = pl.from_arrow(agg_t), pl.from_arrow(hits_t)
    qrels = judge(build_pool(hits, cfg.run.pool_depth), truth, policy="codesearchnet")
    per_query = per_query_metrics(agg, hits, qrels, queries)
    labelled = label_hits(hits, agg, qrels)
    cals, _ = calibrate(
        labelled, min_labels=cfg.calibration.min_labels, seed=seed, noise_reps=50, shared={twin.name: base.name}
    )
    s = build_stream(per_query, labelled, cals, truth, base.name, twin.name, twin.name)
    res = run_ladder(CanaryStream(s.aa_queries, s.aa_labels, s.aa_queries, s.aa_labels), canary_config())
    aa = res.decisions.filter(pl.col("phase") == "aa").row(0, named=True)
    hero = aa_equivalence_per_query(per_query, base.name, twin.name, canary_config())
    return {
        "seed": seed,
        "canary_passed": bool(res.aa_passed),
        "hero_equivalent": bool(hero.equivalent),
        "passed": bool(res.aa_passed) and bool(hero.equivalent),
        "reason": aa["reason"] if not res.aa_passed else hero.reason,
        "tost": {**res.noise_floor.get("aa_tost", {}), **{f"hero:{r['metric']}": dict(r) for r in hero.rows}},
        "queries": int(per_query.filter(pl.col("system") == base.name).height),
        "order": info.get("order"),
        "collect_s": collect_s,
        "sd_q": res.noise_floor.get("sd_q"),
    }


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    ci = st.binomtest(k, n).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def run(size: str = "smoke", repeats: int = 1) -> dict[str, Any]:
    cfg = SIZES[size]
    t0 = time.perf_counter()
    runs = []
    for i in range(cfg["seeds"]):
        r = aa_once(BASE_SEED + i, cfg["caps"])
        runs.append(r)
        print(
            f"seed {r['seed']}: canary A/A {'ok' if r['canary_passed'] else 'BROKEN'}, hero A/A "
            f"{'equivalent' if r['hero_equivalent'] else 'NOT equivalent'}, {r['queries']} queries, "
            f"sd_q {r['sd_q']:.4f}, collect {r['collect_s']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    n = len(runs)
    alarms = sum(not r["passed"] for r in runs)
    lo, hi = clopper_pearson(alarms, n)
    alpha = canary_config().aa_alpha
    consistent = lo <= alpha
    rows = [
        row(
            f"A/A false-alarm rate over {n} reference-engine seeds",
            [alarms / n],
            unit="share",
            target=f"95% CI lower bound <= alpha {alpha:g}",
            kind="max",
            threshold=alpha if consistent else -1.0,
            note=f"{alarms}/{n}, Clopper-Pearson 95% CI [{lo:.3f}, {hi:.3f}]",
        )
    ]
    rows[0]["holds"] = consistent
    worst: dict[str, float] = {}
    for r in runs:
        for m, t in r["tost"].items():
            worst[m] = max(worst.get(m, 0.0), t["p_tost"])
    notes = [
        f"reference engine (`local`), {runs[0]['queries']} paired queries per A/A, collection "
        f"{runs[0]['order']}, straggler seeds {BASE_SEED}..{BASE_SEED + n - 1}; wall {time.perf_counter() - t0:.0f} s",
        f"false alarms (canary A/A or hero A/A broken): {alarms} of {n} = {alarms / n:.3f}, exact binomial 95% CI "
        f"[{lo:.3f}, {hi:.3f}] vs nominal alpha {alpha:g}: "
        + ("consistent" if consistent else "NOT consistent (the CI lies above alpha)"),
        "largest TOST p over the seeds, per metric: " + ", ".join(f"{m} {p:.3g}" for m, p in sorted(worst.items())),
        "A/A per-query SLA noise sd_q per seed: " + ", ".join(f"{r['sd_q']:.3f}" for r in runs),
    ]
    for r in runs:
        if not r["passed"]:
            notes.append(f"seed {r['seed']}: {r['reason'][:300]}")
    return {
        "name": "aa_engine",
        "title": "A/A false-alarm study on the reference engine (issue 17)",
        "rows": rows,
        "notes": notes,
        "profile": None,
        "study": {"alarms": alarms, "n": n, "rate": alarms / n, "ci": (lo, hi), "alpha": alpha},
    }


if __name__ == "__main__":
    import json

    out = run(sys.argv[1] if len(sys.argv) > 1 else "smoke", 1)
    print(json.dumps({"notes": out["notes"], "study": out["study"]}, indent=1, default=str))
