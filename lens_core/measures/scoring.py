"""Scores with bootstrap CIs over queries (SPEC §4, §5) and the hero table (SPEC §10).

scores.parquet: one row per (system, slice, metric) with mean, ci_low, ci_high, n.
- quality metrics (nDCG@10, Recall@50, SLA-Recall@50, MRR@10, Success@k): means of the
  per-query table;
- latency: p50/p95/p99 of lat_ms over answered queries, the ratio p99/p95, the within-SLA
  share (failed queries count as outside the SLA);
- judged_10: judged hits / hits in the top 10 (ratio of sums); file_credit:
  1 − span-credited gain / file-credited gain in the top 10 (ratio of sums);
- failed: share of queries that failed or were missing (they score 0 above);
- probes, cpu_ms: means per query;
- the configured extra measures (`measures:` beyond the contract's; issue 19): means of their
  per-query columns, with the same resamples.
CIs: paired percentile bootstrap over queries (B from config, >= 2000), the same resamples
for every system and metric of a slice, seeded per slice.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from lens_core.common.contracts import HERO_TABLE_METRICS, QUALITY_METRICS, SLICE_ALL, SLICE_DIMENSIONS
from lens_core.measures.registry import RESERVED_COLUMNS, extra_measures
from lens_core.stats.bootstrap import bootstrap_means, bootstrap_percentiles, percentile_ci

MEAN_METRICS = QUALITY_METRICS + ("within_sla", "failed", "probes", "cpu_ms")


def slices(per_query: pl.DataFrame) -> list[tuple[str, pl.Expr]]:
    out = [(SLICE_ALL, pl.lit(True))]
    for dim in SLICE_DIMENSIONS:
        values = sorted(per_query[dim].unique().drop_nulls().to_list())
        if values == [SLICE_ALL]:
            continue  # a placeholder (e.g. TREC input without suites): the slice would repeat `all`
        for v in values:
            out.append((f"{dim}={v}", pl.col(dim) == v))
    return out


def _slice_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")


def _latency_dists(lat: np.ndarray, b: int, seed: int) -> dict[str, tuple[float, np.ndarray]]:
    """Point estimates and bootstrap distributions of p50/p95/p99 and p99/p95 of one system."""
    lat = lat[np.isfinite(lat)]
    if lat.size == 0:
        return {}
    point = np.percentile(lat, [50, 95, 99])
    d50, d95, d99 = bootstrap_percentiles(lat, (50, 95, 99), b=b, seed=seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (float(point[2] / point[1]) if point[1] > 0 else float("nan"), d99 / d95)
    return {
        "lat_p50": (float(point[0]), d50),
        "lat_p95": (float(point[1]), d95),
        "lat_p99": (float(point[2]), d99),
        "p99_p95": ratio,
    }


def _system_rows(
    system: str,
    name: str,
    sp: pl.DataFrame,
    mat: np.ndarray,
    dist: np.ndarray,
    b: int,
    sseed: int,
    alpha: float,
    extras: tuple[str, ...] = (),
) -> list[tuple]:
    n = sp.height
    rows: list[tuple] = []
    point = mat.mean(axis=1)
    lo, hi = percentile_ci(dist, alpha)
    for j, m in enumerate(MEAN_METRICS):
        rows.append((system, name, m, float(point[j]), float(lo[j]), float(hi[j]), n))
    k = len(MEAN_METRICS)
    with np.errstate(divide="ignore", invalid="ignore"):
        judged_d = dist[k] / dist[k + 1]
        fc_d = 1.0 - dist[k + 2] / dist[k + 3]
        judged_pt = point[k] / point[k + 1] if point[k + 1] > 0 else np.nan
        fc_pt = 1.0 - point[k + 2] / point[k + 3] if point[k + 3] > 0 else 0.0
    for metric, pt, d in (("judged_10", judged_pt, judged_d), ("file_credit", fc_pt, fc_d)):
        d = d[np.isfinite(d)]
        if metric == "file_credit" and d.size == 0:
            d = np.zeros(1)  # no file-level gain anywhere: nothing leaks
        if not np.isfinite(pt) or d.size == 0:
            continue  # no hits in any top 10: undefined, not reported as a number
        l2, h2 = percentile_ci(d, alpha)
        rows.append((system, name, metric, float(pt), float(l2), float(h2), n))
    for j, m in enumerate(extras, start=k + 4):  # the configured extra measures: means, like the contract's
        rows.append((system, name, m, float(point[j]), float(lo[j]), float(hi[j]), n))
    lat = sp["lat_ms"].cast(pl.Float64).to_numpy()
    lseed = sseed + 1 + int.from_bytes(system.encode()[:4].ljust(4, b"\0"), "little")
    for metric, (pt, d) in _latency_dists(lat, b, lseed).items():
        d = d[np.isfinite(d)]
        if not np.isfinite(pt) or d.size == 0:
            continue
        l2, h2 = percentile_ci(d, alpha)
        rows.append((system, name, metric, pt, float(l2), float(h2), int(np.isfinite(lat).sum())))
    return rows


def score(
    per_query: pl.DataFrame, b: int = 2000, seed: int = 0, alpha: float = 0.05, extras: tuple[str, ...] | None = None
) -> pl.DataFrame:
    """scores.parquet rows for every system × slice × metric. `extras`: the extra measure
    columns of the per-query table to score as means (None: those of the configured measures,
    `registry.extra_measures`, that the table has)."""
    if extras is None:
        known = set(MEAN_METRICS) | {"judged_hits_10", "n_hits_10", "span_gain_10", "file_gain_10"}
        other = set(per_query.columns) - known - RESERVED_COLUMNS
        extras = tuple(m.column for m in extra_measures() if m.column in other) if other else ()
    rows: list[tuple] = []
    systems = sorted(per_query["system"].unique().to_list())
    for name, expr in slices(per_query):
        part = per_query.filter(expr)
        sseed = _slice_seed(seed, name)
        parts = {system: part.filter(pl.col("system") == system).sort("qid") for system in systems}
        parts = {k: v for k, v in parts.items() if v.height}
        if not parts:
            continue
        # Systems of one slice share the query set (the per-query grid), so one resample
        # matrix serves all of them: paired CIs, one matrix product.
        n_set = {v.height for v in parts.values()}
        groups = [list(parts)] if len(n_set) == 1 else [[k] for k in parts]
        for group in groups:
            mats = []
            for system in group:
                sp = parts[system]
                mats.append(
                    np.vstack(
                        [sp[m].cast(pl.Float64).fill_null(0.0).to_numpy() for m in MEAN_METRICS]
                        + [
                            sp[c].cast(pl.Float64).fill_null(0.0).to_numpy()
                            for c in ("judged_hits_10", "n_hits_10", "span_gain_10", "file_gain_10")
                        ]
                        + [sp[m].cast(pl.Float64).fill_null(0.0).to_numpy() for m in extras]
                    )
                )
            big = np.vstack(mats)
            big_dist = bootstrap_means(big, b=b, seed=sseed)
            per = big.shape[0] // len(group)
            for gi, system in enumerate(group):
                mat = big[gi * per : (gi + 1) * per]
                dist = big_dist[gi * per : (gi + 1) * per]
                rows.extend(_system_rows(system, name, parts[system], mat, dist, b, sseed, alpha, extras))
    return pl.DataFrame(
        rows,
        schema={
            "system": pl.String,
            "slice": pl.String,
            "metric": pl.String,
            "mean": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
            "n": pl.Int64,
        },
        orient="row",
    ).sort(["system", "slice", "metric"])


def hero_table(
    scores: pl.DataFrame,
    cfg_hashes: dict[str, str],
    packs: dict[str, str] | None = None,
    metrics: tuple[str, ...] = HERO_TABLE_METRICS,
) -> pl.DataFrame:
    """hero_span_v22.csv: one row per system (slice `all`): each metric with its CI."""
    s = scores.filter((pl.col("slice") == SLICE_ALL) & pl.col("metric").is_in(list(metrics)))
    wide = s.pivot(on="metric", index="system", values=["mean", "ci_low", "ci_high"])
    cols = [pl.col("system")]
    for m in metrics:
        if f"mean_{m}" in wide.columns:
            cols += [
                pl.col(f"mean_{m}").alias(m),
                pl.col(f"ci_low_{m}").alias(f"{m}_ci_low"),
                pl.col(f"ci_high_{m}").alias(f"{m}_ci_high"),
            ]
    n = s.filter(pl.col("metric") == "ndcg_10").select("system", pl.col("n").alias("n_queries"))
    out = wide.select(cols).join(n, on="system", how="left")
    out = out.with_columns(
        pl.col("system").replace_strict(cfg_hashes, default=None).alias("cfg_hash"),
        pl.col("system").replace_strict(packs or {}, default="").alias("pack"),
    )
    front = ["system", "pack", "cfg_hash", "n_queries"]
    return out.select(front + [c for c in out.columns if c not in front]).sort("system")


def hero_markdown(
    table: pl.DataFrame, metrics: tuple[str, ...] = ("ndcg_10", "sla_recall_50", "lat_p95", "lat_p99")
) -> str:
    """A compact markdown rendering: metric [low, high] per system."""
    head = "| system | " + " | ".join(metrics) + " |"
    sep = "| --- | " + " | ".join("---" for _ in metrics) + " |"
    lines = [head, sep]
    for r in table.iter_rows(named=True):
        cells = []
        for m in metrics:
            v = r.get(m)
            if v is None:
                cells.append("–")
            elif m.startswith("lat_"):
                cells.append(f"{v:.1f} [{r[m + '_ci_low']:.1f}, {r[m + '_ci_high']:.1f}]")
            else:
                cells.append(f"{v:.4f} [{r[m + '_ci_low']:.4f}, {r[m + '_ci_high']:.4f}]")
        lines.append(f"| {r['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
