"""LVM checks (SPEC §12, issue 7 item 6): pure functions -> `CheckResult`.

Thresholds come from `config/lvm.yaml` (`checks:`):
- drift:   the candidate's Hit@5 (the best model of this evaluation) more than `hit5_drift_rel`
           (5%, relative) below the champion's Hit@5. No champion yet: passes.
- lanes:   a lane's Hit@5 (candidate model) more than `lane_gap_rel` (15%, relative) below the
           mean of the lanes' Hit@5. Lanes with fewer than `lane_min_queries` queries are listed
           but not judged (too noisy).
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


def run_checks(
    table: pa.Table, summary: dict, champion_hit5: float | None, cfg: dict, candidate_model: str
) -> list[CheckResult]:
    c = cfg["checks"]
    all5 = {r["model"]: r["hit"] for r in table.to_pylist() if r["lane"] == SLICE_ALL and r["k"] == 5}
    models = summary["models"]
    return [
        check_drift(all5[candidate_model], champion_hit5, float(c["hit5_drift_rel"]), {"candidate": candidate_model}),
        check_lanes(lane_hits(table, candidate_model), float(c["lane_gap_rel"]), int(c["lane_min_queries"])),
        check_p95({m: v["p95_ms"] for m, v in models.items()}, float(c["p95_ms"])),
        check_nan({m: v["nan_rate"] for m, v in models.items()}, float(c["nan_rate"])),
    ]
