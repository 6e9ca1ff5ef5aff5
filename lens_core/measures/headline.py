"""The week's headline figures as plain numbers, one per (metric, system), for charts across
weeks (the Dagster asset Plots tab charts numeric metadata by partition; issue 23)."""

from __future__ import annotations

import math

import polars as pl

from lens_core.common.contracts import SLICE_ALL

# Metric -> label, in the order a reader looks for them.
HEADLINE_METRICS: dict[str, str] = {
    "ndcg_10": "nDCG@10",
    "sla_recall_50": "SLA-Recall@50",
    "lat_p95": "p95 ms",
    "lat_p99": "p99 ms",
    "judged_10": "judged@10",
}


def headline_figures(
    scores: pl.DataFrame, systems: list[str] | None = None, metrics: tuple[str, ...] = tuple(HEADLINE_METRICS)
) -> dict[str, float]:
    """`{"<metric>/<system>": mean}` over slice `all` (finite values only), metrics in the order
    given, systems in the order given (default: sorted)."""
    if scores.height == 0:
        return {}
    s = scores.filter((pl.col("slice") == SLICE_ALL) & pl.col("metric").is_in(list(metrics)))
    means = {(r["metric"], r["system"]): r["mean"] for r in s.iter_rows(named=True)}
    names = systems if systems is not None else sorted(set(s["system"].to_list()))
    out: dict[str, float] = {}
    for m in metrics:
        for sys_name in names:
            v = means.get((m, sys_name))
            if v is not None and math.isfinite(v):
                out[f"{m}/{sys_name}"] = float(v)
    return out


def ece_figures(gates: pl.DataFrame) -> dict[str, float]:
    """`{"ece/<system>": value}` from the ece gate's rows of the gate summary: the worst judged
    cell's ECE per system; a system judged on too little data has no number (not a zero)."""
    if gates.height == 0 or "gate" not in gates.columns:
        return {}
    rows = gates.filter((pl.col("gate") == "ece") & pl.col("value").is_not_null()).sort("subject")
    return {f"ece/{r['subject']}": float(r["value"]) for r in rows.iter_rows(named=True) if math.isfinite(r["value"])}
