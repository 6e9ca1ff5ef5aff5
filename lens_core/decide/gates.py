"""SPEC §7 gates as pure functions over the chain's tables.

Each function returns GateResults (one per judged subject) with the value, the threshold from
config, whether it blocks publication, and the reason. A gate whose input is missing or empty
fails with the reason; it never passes silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from lens_core.common.contracts import SLICE_ALL
from lens_core.common.settings import GateSpec, load_config
from lens_core.stats.bootstrap import paired_delta_ci


@dataclass
class GateResult:
    name: str
    value: float | None
    threshold: float | None
    blocking: bool
    passed: bool
    reason: str = ""
    owner: str = ""
    subject: str = ""  # the system or table the gate judged
    status: str = ""  # pass | fail | insufficient (judged on too little data: reported, not failed)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "pass" if self.passed else "fail"

    def attestation(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "blocking": self.blocking,
            "passed": self.passed,
            "status": self.status,
            "reason": self.reason,
            "subject": self.subject,
        }


def gate_config(name: str) -> GateSpec:
    gates = load_config().gates
    if name not in gates:
        raise KeyError(f"gate {name!r} has no entry under `gates:` in the config")
    return gates[name]


def gate_result(
    name: str, value: float | None, passed: bool, reason: str, subject: str = "", status: str = ""
) -> GateResult:
    g = gate_config(name)
    if value is not None and not math.isfinite(value):
        passed, reason, status = False, f"{reason} (value is not finite)", "fail"
    return GateResult(
        name=name,
        value=None if value is None else float(value),
        threshold=g.threshold,
        blocking=g.blocking,
        passed=bool(passed),
        reason=reason,
        owner=g.owner,
        subject=subject,
        status=status,
    )


def _missing(name: str, what: str, subject: str = "") -> GateResult:
    return gate_result(name, None, False, f"input missing or empty: {what}", subject)


def _metric(scores: pl.DataFrame, metric: str, slice_: str = SLICE_ALL) -> dict[str, float]:
    s = scores.filter((pl.col("metric") == metric) & (pl.col("slice") == slice_))
    return dict(zip(s["system"].to_list(), s["mean"].to_list()))


def schema_gate(files_checked: int, rows: int) -> GateResult:
    if files_checked == 0 or rows == 0:
        return _missing("schema", "no raw-run rows were ingested")
    return gate_result(
        "schema", float(files_checked), True, f"{files_checked} raw-run files, {rows} records conform to the contract"
    )


def pool_gate(
    scores: pl.DataFrame | None, queue_size: int | None = None, queue_path: str | None = None
) -> list[GateResult]:
    """judged@10 per system (labels only: a hit nobody labelled is unjudged). A failing subject's
    reason names the unjudged share and the judging queue (its size and where it is)."""
    thr = gate_config("pool").threshold
    if scores is None or scores.height == 0:
        return [_missing("pool", "scores")]
    judged = _metric(scores, "judged_10")
    if not judged:
        return [_missing("pool", "judged_10 in scores")]
    todo = "" if queue_size is None else f"; {queue_size} pool member(s) to judge in the judging queue"
    todo += f" ({queue_path})" if queue_path and queue_size else ""
    return [
        gate_result(
            "pool",
            v,
            v >= thr,
            f"judged@10 = {v:.3f} (>= {thr})" + ("" if v >= thr else f", {1 - v:.1%} of the top 10 unjudged{todo}"),
            s,
        )
        for s, v in sorted(judged.items())
    ]


UNKNOWN_CFG = "unknown"  # what the raw record holds when the engine reported no cfg_hash


def cfg_hash_gate(agg: pl.DataFrame | None, systems) -> list[GateResult]:
    """Reconcile the configuration each system's engine reported (agg.cfg_hash, per answered
    query) with its declaration (issue 17). Per system: fails when the engine reported more
    than one cfg_hash within the run (its configuration changed mid-run), or when the system
    declares an expected cfg_hash and the engine reported another; passes, saying so, when the
    engine reports none (the JSON shape) or when nothing is declared to compare with.
    Value: the number of distinct reported cfg_hash values."""
    if agg is None or agg.height == 0:
        return [_missing("cfg_hash", "agg")]
    seen = (
        agg.filter(pl.col("cfg_hash") != UNKNOWN_CFG)
        .group_by("system")
        .agg(pl.col("cfg_hash").unique().sort().alias("h"), pl.len().alias("n"))
    )
    reported = {r["system"]: r["h"] for r in seen.iter_rows(named=True)}
    out = []
    for s in systems:
        hs = reported.get(s.name, [])
        expected = s.expected_cfg_hash
        if len(hs) > 1:
            ok, why = (
                False,
                (
                    f"the engine reported {len(hs)} configurations within the run ({', '.join(hs[:4])}): "
                    "the system changed while it was being measured"
                ),
            )
        elif not hs:
            ok, why = True, f"the engine reports no cfg_hash; the project's hash of the declaration is {s.cfg_hash}"
        elif expected and hs[0] != expected:
            ok, why = (
                False,
                (
                    f"the engine reported cfg_hash {hs[0]} but the declaration expects {expected}: the endpoint "
                    "serves another configuration than the one declared (fix the endpoint or the declared cfg_hash)"
                ),
            )
        elif expected:
            ok, why = True, f"reported cfg_hash {hs[0]} = declared"
        else:
            ok, why = True, f"reported cfg_hash {hs[0]} (no expected cfg_hash declared)"
        out.append(gate_result("cfg_hash", float(len(hs)), ok, why, s.name))
    return out


def flatline_gate(per_query: pl.DataFrame | None) -> list[GateResult]:
    thr = gate_config("flatline").threshold
    if per_query is None or per_query.height == 0:
        return [_missing("flatline", "per_query")]
    var = per_query.group_by("system").agg(pl.col("ndcg_10").var(ddof=0).alias("v")).sort("system")
    return [
        gate_result("flatline", v, (v or 0.0) > thr, f"Var(nDCG@10) = {v:.6f} (> {thr})", s) for s, v in var.iter_rows()
    ]


def file_credit_gate(scores: pl.DataFrame | None) -> list[GateResult]:
    thr = gate_config("file_credit").threshold
    if scores is None or scores.height == 0:
        return [_missing("file_credit", "scores")]
    fc = _metric(scores, "file_credit")
    if not fc:
        return [_missing("file_credit", "file_credit in scores")]
    return [
        gate_result("file_credit", v, v <= thr, f"file-only credit share = {v:.4f} (<= {thr})", s)
        for s, v in sorted(fc.items())
    ]


def tail_gate(scores: pl.DataFrame | None) -> list[GateResult]:
    thr = gate_config("tail").threshold
    if scores is None or scores.height == 0:
        return [_missing("tail", "scores")]
    r = _metric(scores, "p99_p95")
    if not r:
        return [_missing("tail", "p99_p95 in scores")]
    return [gate_result("tail", v, v <= thr, f"p99/p95 = {v:.3f} (<= {thr})", s) for s, v in sorted(r.items())]


def _vs_baseline(
    name: str,
    scores: pl.DataFrame | None,
    metric: str,
    baseline: str,
    relative: bool,
    higher_is_better: bool,
    per_query: pl.DataFrame | None = None,
) -> list[GateResult]:
    """Each system's Δ of `metric` vs the baseline against the gate's threshold. With
    `per_query`, judged on the paired bootstrap CI of the Δ (issue 17): the gate guards against
    a regression, so it fails only when the regression is shown (the whole CI beyond the
    threshold); identical systems differ by noise, and a point estimate failed half of them."""
    thr = gate_config(name).threshold
    if scores is None or scores.height == 0:
        return [_missing(name, "scores")]
    vals = _metric(scores, metric)
    if baseline not in vals:
        return [_missing(name, f"{metric} of baseline {baseline}")]
    base = vals[baseline]
    run = load_config().run
    out = []
    for s, v in sorted(vals.items()):
        if s == baseline:
            continue
        delta = (v - base) / base if relative and base else v - base
        ci = paired_delta_ci(per_query, s, baseline, metric, relative=relative, b=run.ci_b, seed=run.seed)
        op = ">=" if higher_is_better else "<="
        if ci is None:
            ok = delta >= thr if higher_is_better else delta <= thr
            how = ""
        else:
            _, lo, hi = ci
            ok = hi >= thr if higher_is_better else lo <= thr
            how = f", CI [{lo:+.4f}, {hi:+.4f}]: " + ("not shown beyond the threshold" if ok else "shown beyond it")
        out.append(gate_result(name, delta, ok, f"{metric} Δ vs {baseline} = {delta:+.4f} ({op} {thr}){how}", s))
    return out


def sla_recall_gate(
    scores: pl.DataFrame | None, baseline: str, per_query: pl.DataFrame | None = None
) -> list[GateResult]:
    return _vs_baseline(
        "sla_recall", scores, "sla_recall_50", baseline, relative=False, higher_is_better=True, per_query=per_query
    )


def cost_gate(scores: pl.DataFrame | None, baseline: str, per_query: pl.DataFrame | None = None) -> list[GateResult]:
    return _vs_baseline("cost", scores, "cpu_ms", baseline, relative=True, higher_is_better=False, per_query=per_query)


def calibration_released(source: str | None = None) -> bool:
    """`calibration.released` of the config: is calibrated confidence part of what is released
    (for this data source, when the key is a per-source mapping; a source it does not name
    counts as released)?"""
    rel = load_config().calibration.released
    if isinstance(rel, dict):
        return bool(rel.get(source, True)) if source is not None else all(rel.values())
    return bool(rel)


def ece_gate(report: pl.DataFrame | None, source: str | None = None) -> list[GateResult]:
    """Per system: no cell with enough labels has ECE above the gate. Cells whose noise floor is
    above the gate are `insufficient`: counted and named in the reason, neither pass nor fail.
    A system with no sufficient cell at all reports status `insufficient`.

    The gate blocks publication only where calibrated confidence is released
    (`calibration_released(source)`, issue 17); otherwise every result is WARN (non-blocking)
    with the same value, status and reason, plus a note saying why it does not block."""
    out = _ece_results(report)
    if calibration_released(source):
        return out
    for g in out:
        g.blocking = False
        g.reason += "; not blocking: calibrated confidence is not released (calibration.released)"
    return out


def _ece_results(report: pl.DataFrame | None) -> list[GateResult]:
    thr = gate_config("ece").threshold
    if report is None or report.height == 0:
        return [_missing("ece", "calibration cell report")]
    out = []
    for (system,), part in sorted(report.group_by(["system"]), key=lambda kv: kv[0]):
        judged = part.filter(pl.col("status").is_in(["pass", "fail"]))
        insufficient = part.filter(pl.col("status") == "insufficient")
        failing = judged.filter(pl.col("status") == "fail")
        need = insufficient["labels_needed"].drop_nulls()
        note = (
            f"; {insufficient.height} cell(s) insufficient (noise floor > {thr}; "
            f"~{int(need.median())} held-out labels needed)"
            if insufficient.height and need.len()
            else (f"; {insufficient.height} cell(s) insufficient" if insufficient.height else "")
        )
        if judged.height == 0:
            out.append(
                gate_result(
                    "ece", None, True, f"no cell has enough labels to judge ECE{note}", system, status="insufficient"
                )
            )
            continue
        worst = float(judged["ece"].max())
        cells = ", ".join(f"{r['intent']}/{r['language']}={r['ece']:.3f}" for r in failing.iter_rows(named=True))
        out.append(
            gate_result(
                "ece",
                worst,
                failing.height == 0,
                (
                    f"ECE > {thr} in {cells}"
                    if failing.height
                    else f"max ECE {worst:.4f} over {judged.height} judged cell(s) (<= {thr})"
                )
                + note,
                system,
            )
        )
    return out


def calibration_parity_gate(parity: pl.DataFrame | None) -> list[GateResult]:
    thr = gate_config("calibration_parity").threshold
    if parity is None or parity.height == 0:
        return [_missing("calibration_parity", "calibrator parity table")]
    worst = float(parity["max_abs_diff"].max())
    worst_ece = float(parity["ece_diff"].max())
    bad = parity.filter(~pl.col("passed"))
    return [
        gate_result(
            "calibration_parity",
            worst,
            bad.height == 0 and worst <= thr,
            f"{parity.height} calibrators: max|Δ| = {worst:.2e} (<= {thr}), max|ΔECE| = {worst_ece:.2e} (<= 1e-4)"
            + (f"; failing: {', '.join(bad['calibrator'].to_list()[:5])}" if bad.height else ""),
        )
    ]


def decision_gates(comparisons: pl.DataFrame | None, primary: dict[str, tuple[str, str, float]]) -> list[GateResult]:
    """Power and CI-width gates of each decision's primary comparison.

    `primary` maps a test system to (metric, slice, needed effect). Power: MDE <= needed
    effect; CI width: the primary delta CI width <= threshold.
    """
    thr_w = gate_config("ci_width").threshold
    if comparisons is None or comparisons.height == 0:
        return [_missing("power", "comparisons"), _missing("ci_width", "comparisons")]
    out = []
    for test, (metric, slice_, needed) in sorted(primary.items()):
        row = comparisons.filter((pl.col("test") == test) & (pl.col("metric") == metric) & (pl.col("slice") == slice_))
        if row.height == 0:
            out += [
                _missing("power", f"{metric} on {slice_}", test),
                _missing("ci_width", f"{metric} on {slice_}", test),
            ]
            continue
        r = row.row(0, named=True)
        mde = r.get("mde")
        if mde is None:
            out.append(
                gate_result("power", None, False, f"MDE not computable: {r.get('reason') or r.get('status')}", test)
            )
        else:
            out.append(
                gate_result(
                    "power",
                    mde,
                    mde <= needed,
                    f"MDE {mde:.4f} on {metric} [{slice_}] with n={r['n']} (<= needed {needed})",
                    test,
                )
            )
        if r["ci_low"] is None or r["ci_high"] is None:
            out.append(gate_result("ci_width", None, False, f"no CI: {r.get('reason') or r.get('status')}", test))
        else:
            w = r["ci_high"] - r["ci_low"]
            out.append(
                gate_result("ci_width", w, w <= thr_w, f"{metric} [{slice_}] Δ CI width {w:.4f} (<= {thr_w})", test)
            )
    return out


def foundation_gates(
    files_checked: int, rows: int, scores: pl.DataFrame, per_query: pl.DataFrame, baseline: str
) -> list[GateResult]:
    """The gates computable from the scored chain alone."""
    return (
        [schema_gate(files_checked, rows)]
        + pool_gate(scores)
        + flatline_gate(per_query)
        + file_credit_gate(scores)
        + tail_gate(scores)
        + sla_recall_gate(scores, baseline)
        + cost_gate(scores, baseline)
    )


def gate_table_markdown(gates: list[GateResult]) -> str:
    lines = ["| gate | subject | value | threshold | blocking | status |", "| --- | --- | --- | --- | --- | --- |"]
    for g in gates:
        v = "–" if g.value is None else f"{g.value:.4g}"
        status = g.status if g.passed else ("FAIL" if g.blocking else "warn")
        lines.append(f"| {g.name} | {g.subject or '–'} | {v} | {g.threshold} | {g.blocking} | {status} |")
    return "\n".join(lines)
