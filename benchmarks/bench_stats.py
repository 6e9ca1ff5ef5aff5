"""Statistics benchmark (issue 8, row 3): 4 systems, 6 pairs × 6 metrics, B = 2,000 bootstrap
CIs and B = 10,000 randomisation p-values over the per-query table.

Ours: `lens_core.stats.compare.compare` once per pair (slices="all" for the like-for-like figure, and
with every slice dimension as the pipeline runs it). Peers, in the same process:
- scipy: `scipy.stats.bootstrap(paired=True, method="percentile", n_resamples=2000)` plus
  `scipy.stats.permutation_test(permutation_type="samples", n_resamples=10000)` per
  (pair, metric). At full size a subset of the 36 comparisons is timed and the total is
  extrapolated linearly (each comparison costs the same: same n, same B).
- ranx: `compare(qrels, runs, metrics, stat_test="fisher", n_permutations=10000)` on runs of a
  query subset; its cost (evaluation + a Fisher randomisation test per ordered pair and
  metric) is linear in the number of queries, so the time is scaled to the full size.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import polars as pl

from benchmarks.common import have, profile_top, repeat, row
from benchmarks.workloads import STATS_METRICS, SYSTEMS, per_query_workload, scoring_workload

SIZES = {
    "smoke": {"queries": 400, "scipy_comparisons": 2, "ranx_queries": 0, "budget_s": None},
    "full": {"queries": 48_768, "scipy_comparisons": 3, "ranx_queries": 1_000, "budget_s": 150.0},
}
B_CI, B_PERM = 2000, 10_000


def _ours(pq: pl.DataFrame, slices: tuple[str, ...]) -> pl.DataFrame:
    from lens_core.stats.compare import compare

    frames = [
        compare(pq, c, t, list(STATS_METRICS), slices=slices, b_ci=B_CI, b_perm=B_PERM, seed=7)
        for c, t in itertools.combinations(SYSTEMS, 2)
    ]
    return pl.concat(frames)


def _scipy_one(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float, float]:
    from scipy import stats as st

    def mean_diff(a, b, axis=-1):
        return np.mean(b - a, axis=axis)

    rng = np.random.default_rng(seed)
    bs = st.bootstrap(
        (x, y), mean_diff, paired=True, vectorized=True, n_resamples=B_CI, method="percentile", batch=200, rng=rng
    )
    pt = st.permutation_test(
        (x, y), mean_diff, permutation_type="samples", vectorized=True, n_resamples=B_PERM, batch=200, rng=rng
    )
    return float(bs.confidence_interval.low), float(bs.confidence_interval.high), float(pt.pvalue)


def _scipy(pq: pl.DataFrame, comparisons: list[tuple[str, str, str]]) -> list[tuple]:
    out = []
    cols = {s: pq.filter(pl.col("system") == s).sort("qid") for s in SYSTEMS}
    for i, (c, t, m) in enumerate(comparisons):
        x = cols[c][m].to_numpy()
        y = cols[t][m].to_numpy()
        out.append((c, t, m, *_scipy_one(x, y, i)))
    return out


def _ranx_runs(n_queries: int):
    from ranx import Qrels, Run

    w = scoring_workload(48_768, 100, n_systems=4)  # reuse the full scoring workload's files
    keep = pl.col("qid") < f"q{n_queries:06d}"
    docno = (
        pl.col("repo")
        + ":"
        + pl.col("path")
        + ":"
        + pl.col("start_line").cast(pl.String)
        + "-"
        + pl.col("end_line").cast(pl.String)
    )
    qr = pl.read_parquet(w["qrels_parquet"]).filter(keep)
    qrels_d: dict[str, dict[str, int]] = {}
    for q, d, r in qr.select("qid", docno.alias("d"), "rel").iter_rows():
        qrels_d.setdefault(q, {})[d] = int(r)
    hits = pl.read_parquet(w["hits_all"]).filter(keep)
    runs = []
    for s in SYSTEMS:
        rd: dict[str, dict[str, float]] = {}
        for q, d, sc in hits.filter(pl.col("system") == s).select("qid", docno.alias("d"), "score").iter_rows():
            rd.setdefault(q, {})[d] = float(sc)
        runs.append(Run.from_dict(rd, name=s))
    return Qrels.from_dict(qrels_d), runs


RANX_METRICS = ["ndcg@10", "recall@50", "mrr@10", "hit_rate@1", "hit_rate@5", "hit_rate@10"]


def run(size: str = "smoke", repeats: int = 3) -> dict[str, Any]:
    cfg = SIZES[size]
    n = cfg["queries"]
    pq = per_query_workload(n)
    rows: list[dict] = []
    notes = [
        f"Per-query table: 4 systems × {n:,} queries, metrics {', '.join(STATS_METRICS)}; "
        f"6 pairs × 6 metrics = 36 comparisons, B = {B_CI:,} (CI), B = {B_PERM:,} (p)."
    ]
    profile = None

    (
        _ours(per_query_workload(50), ("all", "intent")),
        _scipy_one(np.ones(20), np.arange(20.0), 0),
    )  # imports out of the timing
    t_all, r_all = repeat(lambda: _ours(pq, ("all",)), repeats)
    t_sl, r_sl = repeat(lambda: _ours(pq, ("all", "intent", "language", "suite")), repeats)

    all_comps = [(c, t, m) for c, t in itertools.combinations(SYSTEMS, 2) for m in STATS_METRICS]
    k = min(cfg["scipy_comparisons"], len(all_comps))
    sub = all_comps[:: max(1, len(all_comps) // k)][:k]
    t_sc, r_sc = repeat(lambda: _scipy(pq, sub), repeats, max_total_s=cfg["budget_s"])
    scale = len(all_comps) / len(sub)
    t_sc_total = [t * scale for t in t_sc]
    rows.append(
        row(
            "statistics: 36 comparisons, slice all",
            t_all,
            peer_name="scipy bootstrap + permutation_test",
            peer=t_sc_total,
            target=">= 20× faster",
            kind="speedup",
            threshold=20.0,
            extrapolated=k < len(all_comps),
        )
    )
    rows.append(
        row(
            f"statistics: 36 comparisons × {r_sl[0]['slice'].n_unique()} slices",
            t_sl,
            peer_name="scipy (slice all only)",
            peer=t_sc_total,
            target="info",
            kind=None,
            extrapolated=k < len(all_comps),
        )
    )
    if k < len(all_comps):
        notes.append(
            f"scipy timed on {k} of 36 comparisons ({', '.join(f'{c}/{t}/{m}' for c, t, m in sub)}), "
            f"{np.median(t_sc) / k:.2f} s each (median), extrapolated ×{scale:.0f} to all 36."
        )
    # agreement with scipy (Monte-Carlo error only)
    ours_all = r_all[0]
    diffs = []
    for c, t, m, lo, hi, p in r_sc[0]:
        r = ours_all.filter((pl.col("control") == c) & (pl.col("test") == t) & (pl.col("metric") == m)).row(
            0, named=True
        )
        diffs.append((abs(r["ci_low"] - lo), abs(r["ci_high"] - hi), abs(r["p_value"] - p), r["ci_high"] - r["ci_low"]))
    d = np.array(diffs)
    notes.append(
        f"Agreement with scipy on the timed comparisons: max |Δ ci_low| {d[:, 0].max():.2e}, "
        f"max |Δ ci_high| {d[:, 1].max():.2e} (CI widths ~{np.median(d[:, 3]):.3f}), max |Δ p| {d[:, 2].max():.3f} "
        "(different random draws: Monte-Carlo error only)."
    )
    notes.append(f"Ours with every slice dimension ({r_sl[0].height} rows per run): median {np.median(t_sl):.2f} s.")

    if not have("ranx"):
        rows.append(
            row(
                "statistics vs ranx compare(fisher)",
                None,
                peer_name="ranx",
                skipped="ranx not installed (pip install ranx)",
            )
        )
    elif not cfg["ranx_queries"]:
        rows.append(
            row(
                "statistics vs ranx compare(fisher)",
                None,
                peer_name="ranx",
                skipped="skipped in --smoke: ranx's numba start-up alone takes ~20-30 s",
            )
        )
    else:
        from ranx import compare

        nq = cfg["ranx_queries"]
        qrels, runs = _ranx_runs(nq)
        compare(qrels, runs[:2], RANX_METRICS[:1], stat_test="fisher", n_permutations=10)  # JIT warm-up

        def one():
            t0 = time.perf_counter()
            compare(qrels, runs, RANX_METRICS, stat_test="fisher", n_permutations=B_PERM, max_p=0.05)
            return {"seconds": (time.perf_counter() - t0) * n / nq}

        t_rx, _ = repeat(one, repeats)
        rows.append(
            row(
                "statistics: 36 comparisons, slice all (p-values only in ranx)",
                t_all,
                peer_name="ranx compare(fisher)",
                peer=t_rx,
                target="faster (> 1×)",
                kind="speedup",
                threshold=1.0,
                extrapolated=True,
            )
        )
        notes.append(
            f"ranx: `compare` on the 4 runs of the scoring workload restricted to {nq:,} queries, "
            f"6 metrics ({', '.join(RANX_METRICS)}), n_permutations={B_PERM:,}; time scaled ×{n / nq:.1f} "
            "to the full query count (evaluation and Fisher tests are linear in queries). ranx tests "
            "every ordered pair (12 × 6 = 72 tests) and computes no CIs."
        )
    if size == "full" and any(r["holds"] is False for r in rows):
        profile = "compare (slice all), cProfile cumulative:\n\n" + profile_top(lambda: _ours(pq, ("all",)))
    return {
        "name": "statistics",
        "title": "Statistics: lens_core.stats.compare.compare vs scipy and ranx",
        "rows": rows,
        "notes": notes,
        "profile": profile,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "smoke", 1), indent=1, default=str))
