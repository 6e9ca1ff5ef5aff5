"""LVM checks (SPEC §12, issue 7 item 6): pure functions -> `CheckResult`.

Thresholds come from `config/lvm.yaml` (`checks:`):
- drift:   the candidate's Hit@5 (the best model of this evaluation) more than `hit5_drift_rel`
           (5%, relative) below the champion's Hit@5. No champion yet: passes.
- lanes:   each lane of the candidate against the SAME lane of the current champion (seed 003:
           "no lane shows >20% degradation vs baseline"): a lane fails when its Hit@5 is more
           than `lane_degradation_rel` (20%, relative) below the champion's on that lane AND
           the drop holds with the lane's CI (paired bootstrap of the per-query difference when
           both were scored on this eval set: CI high < 0; else the candidate's lane CI high
           below the champion's lane Hit@5). A lane that is merely harder than the others is
           reported (the lane-vs-mean view, `lane_gap_rel` 15%, stays in the details as
           information), never failed. Lanes with fewer than `lane_min_queries` queries are
           listed but not judged (too noisy). No champion yet: nothing to degrade from.
- latency: any model's per-query p95 above `p95_ms` (5 ms).
- nan:     any model's NaN/Inf prediction rate above `nan_rate` (0.1%).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from lens_core.common.contracts import SLICE_ALL


@dataclass
class CheckResult:
    name: str
    passed: bool
    value: float
    threshold: float
    severity: str  # "ERROR" (blocks) or "WARN"
    description: str
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def check_drift(
    candidate_hit5: float, champion_hit5: float | None, max_rel: float, details: dict | None = None
) -> CheckResult:
    if champion_hit5 is None:
        return CheckResult(
            "lvm_hit5_drift", True, 0.0, max_rel, "ERROR", "no champion yet: nothing to drift from", details or {}
        )
    drop = (champion_hit5 - candidate_hit5) / champion_hit5 if champion_hit5 > 0 else 0.0
    return CheckResult(
        "lvm_hit5_drift",
        bool(drop <= max_rel),
        float(drop),
        max_rel,
        "ERROR",
        f"Hit@5 {candidate_hit5:.4f} vs champion {champion_hit5:.4f}: relative drop {drop:+.2%} (limit {max_rel:.0%})",
        details or {},
    )


def check_lanes(lane_hits: dict[str, tuple[float, int]], max_gap_rel: float, min_queries: int) -> CheckResult:
    """Lane vs the mean over lanes (information since issue 21: a harder lane is not a
    degradation; `check_lane_degradation` is the lane check)."""
    judged = {l: h for l, (h, n) in lane_hits.items() if n >= min_queries}
    noisy = sorted(l for l, (_, n) in lane_hits.items() if n < min_queries)
    if not judged:
        return CheckResult(
            "lvm_lane_health",
            True,
            0.0,
            max_gap_rel,
            "WARN",
            "no lane has enough queries to judge",
            {"too_few_queries": noisy},
        )
    mean = float(np.mean(list(judged.values())))
    gaps = {l: ((mean - h) / mean if mean > 0 else 0.0) for l, h in judged.items()}
    worst = max(gaps, key=lambda l: gaps[l])
    failing = sorted(l for l, g in gaps.items() if g > max_gap_rel)
    return CheckResult(
        "lvm_lane_health",
        not failing,
        float(gaps[worst]),
        max_gap_rel,
        "WARN",
        f"worst lane {worst}: Hit@5 {judged[worst]:.4f} vs lane mean {mean:.4f} "
        f"({gaps[worst]:+.1%} below; limit {max_gap_rel:.0%})",
        {"lane_mean": mean, "failing": failing, "too_few_queries": noisy, "gaps": gaps},
    )


@dataclass
class LaneFigures:
    """One model's Hit@5 on one lane, with its CI and query count."""

    hit: float
    ci_low: float
    ci_high: float
    n_queries: int


def check_lane_degradation(
    candidate: dict[str, LaneFigures],
    champion: dict[str, LaneFigures] | None,
    max_rel: float,
    min_queries: int,
    paired: dict[str, tuple[float, float, float]] | None = None,
    info: dict | None = None,
    names: tuple[str, str] = ("candidate", "champion"),
) -> CheckResult:
    """Each lane of the candidate vs the same lane of the champion (module docstring).
    `paired`: lane -> (mean diff, CI low, CI high) of per-query Hit@5 (candidate - champion)."""
    details: dict = {"candidate": names[0], "champion": names[1], "lane_vs_mean": info or {}}
    if champion is None:
        return CheckResult(
            "lvm_lane_health",
            True,
            0.0,
            max_rel,
            "WARN",
            "no champion yet: no lane can degrade (lanes vs the lane mean reported as information)",
            details,
        )
    lanes: dict[str, dict] = {}
    failing: list[str] = []
    noisy: list[str] = []
    worst, worst_drop = None, float("-inf")
    for lane in sorted(candidate):
        c = candidate[lane]
        h = champion.get(lane)
        row: dict = {"hit5": c.hit, "ci": [c.ci_low, c.ci_high], "n_queries": c.n_queries}
        if h is None:
            row["status"] = "new lane (not in the champion's evaluation)"
        elif min(c.n_queries, h.n_queries) < min_queries:
            row |= {"champion_hit5": h.hit, "status": f"not judged (< {min_queries} queries)"}
            noisy.append(lane)
        else:
            drop = (h.hit - c.hit) / h.hit if h.hit > 0 else 0.0
            row |= {"champion_hit5": h.hit, "champion_ci": [h.ci_low, h.ci_high], "rel_drop": drop}
            if paired and lane in paired:
                d, lo, hi = paired[lane]
                row |= {"paired_diff": d, "paired_ci": [lo, hi]}
                holds = hi < 0
            else:
                holds = c.ci_high < h.hit
            row["drop_holds_with_ci"] = bool(holds)
            bad = drop > max_rel and holds
            row["status"] = "DEGRADED" if bad else "ok"
            if bad:
                failing.append(lane)
            if drop > worst_drop:
                worst, worst_drop = lane, drop
        lanes[lane] = row
    details |= {"lanes": lanes, "failing": failing, "too_few_queries": noisy}
    if worst is None:
        return CheckResult(
            "lvm_lane_health", True, 0.0, max_rel, "WARN", "no lane has enough queries to judge", details
        )
    w = lanes[worst]
    desc = (
        f"{len(failing)} lane(s) degraded > {max_rel:.0%} vs champion {names[1]} with CI"
        + (f" ({', '.join(failing)})" if failing else "")
        + f"; worst lane {worst}: Hit@5 {w['hit5']:.4f} vs champion's {w['champion_hit5']:.4f} "
        f"({worst_drop:+.1%} relative drop)"
    )
    return CheckResult("lvm_lane_health", not failing, float(worst_drop), max_rel, "WARN", desc, details)


def check_p95(p95_by_model: dict[str, float], max_ms: float) -> CheckResult:
    worst = max(p95_by_model, key=lambda m: p95_by_model[m])
    v = float(p95_by_model[worst])
    return CheckResult(
        "lvm_p95_latency",
        bool(v <= max_ms),
        v,
        max_ms,
        "ERROR",
        f"slowest model {worst}: p95 {v:.3f} ms per query (limit {max_ms} ms)",
        {"p95_ms": p95_by_model},
    )


def check_nan(nan_rate_by_model: dict[str, float], max_rate: float) -> CheckResult:
    worst = max(nan_rate_by_model, key=lambda m: nan_rate_by_model[m])
    v = float(nan_rate_by_model[worst])
    return CheckResult(
        "lvm_nan_predictions",
        bool(v <= max_rate),
        v,
        max_rate,
        "ERROR",
        f"worst model {worst}: {v:.4%} NaN/Inf predictions (limit {max_rate:.2%})",
        {"nan_rate": nan_rate_by_model},
    )


def lane_hits(table: pa.Table, model: str, k: int = 5) -> dict[str, tuple[float, int]]:
    return {
        r["lane"]: (r["hit"], r["n_queries"])
        for r in table.to_pylist()
        if r["model"] == model and r["k"] == k and r["lane"] != SLICE_ALL
    }


def lane_figures(table: pa.Table, model: str, k: int = 5) -> dict[str, LaneFigures]:
    return {
        r["lane"]: LaneFigures(r["hit"], r["ci_low"], r["ci_high"], r["n_queries"])
        for r in table.to_pylist()
        if r["model"] == model and r["k"] == k and r["lane"] != SLICE_ALL
    }


def run_checks(
    table: pa.Table,
    summary: dict,
    champion_hit5: float | None,
    cfg: dict,
    candidate_model: str,
    champion_lanes: dict[str, LaneFigures] | None = None,
    paired_lanes: dict[str, tuple[float, float, float]] | None = None,
    champion_name: str = "",
) -> list[CheckResult]:
    c = cfg["checks"]
    all5 = {r["model"]: r["hit"] for r in table.to_pylist() if r["lane"] == SLICE_ALL and r["k"] == 5}
    models = summary["models"]
    vs_mean = check_lanes(lane_hits(table, candidate_model), float(c["lane_gap_rel"]), int(c["lane_min_queries"]))
    info = {"description": vs_mean.description, "harder_than_mean": vs_mean.details.get("failing", [])}
    info |= {"gaps": vs_mean.details.get("gaps", {}), "lane_mean": vs_mean.details.get("lane_mean")}
    return [
        check_drift(all5[candidate_model], champion_hit5, float(c["hit5_drift_rel"]), {"candidate": candidate_model}),
        check_lane_degradation(
            lane_figures(table, candidate_model),
            champion_lanes,
            float(c.get("lane_degradation_rel", 0.20)),
            int(c["lane_min_queries"]),
            paired_lanes,
            info,
            (summary["models"].get(candidate_model, {}).get("name", candidate_model), champion_name),
        ),
        check_p95({m: v["p95_ms"] for m, v in models.items()}, float(c["p95_ms"])),
        check_nan({m: v["nan_rate"] for m, v in models.items()}, float(c["nan_rate"])),
    ]
