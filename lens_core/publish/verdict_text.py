"""The release verdict as text: markdown for the Dagster UI and `verdict.md`, and the compact
summary `lens-eval run` prints (lens_core.publish.verdict computes it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from lens_core.common.hashing import atomic_write_text
from lens_core.decide.gate_view import failures_first, one_line
from lens_core.publish.verdict import WEEK_METRICS, Verdict, gate_label


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def failed_gates_markdown(v: Verdict, limit: int = 30) -> str:
    if v.failed_gates.height == 0:
        ins = v.counts.get("subjects_insufficient", 0)
        return "no gate failed" + (f" ({ins} subject(s) insufficient: not a pass)" if ins else "")
    rows = [
        {**r, "severity": "ERROR (blocks publication)" if r["blocking"] else "WARN"}
        for r in v.failed_gates.head(limit).to_dicts()
    ]
    more = v.failed_gates.height - len(rows)
    table = md_table(rows, ["gate", "subject", "severity", "value", "threshold", "reason"])
    return table + (f"\n\n_{more} more failing subject(s): see gate_summary_" if more > 0 else "")


def heroes_markdown(v: Verdict) -> str:
    return md_table(v.heroes.to_dicts(), ["pack", "hero", "reason"])


def canary_markdown(v: Verdict) -> str:
    return md_table(v.canary.to_dicts(), ["test", "path", "outcome"])


def deltas_markdown(v: Verdict) -> str:
    if v.previous_week is None:
        return "no previous published week"
    rows = [
        {
            "system": r["system"],
            "metric": WEEK_METRICS.get(r["metric"], r["metric"]),
            "this week": f"{r['this_week']:.4f}",
            "previous": f"{r['previous_week']:.4f}",
            "Δ [95% CI]": f"{r['delta']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
            "moved": "yes" if r["moved"] else "no",
        }
        for r in sorted(v.deltas.to_dicts(), key=lambda r: r["system"] not in v.focus)  # baseline, heroes first
    ]
    head = f"against {v.previous_week} (unpaired 95% CI from each week's bootstrap CI)\n\n"
    return head + md_table(rows, ["system", "metric", "this week", "previous", "Δ [95% CI]", "moved"])


def gates_markdown(v: Verdict) -> str:
    return md_table(v.gates.to_dicts(), ["gate", "verdict", "blocking", "subjects", "pass", "fail", "insufficient"])


def summary_lines(v: Verdict, max_failed: int = 8) -> list[str]:
    """A compact plain-text summary for the terminal."""
    out = [v.headline]
    out.append(f"  fingerprint: {v.fingerprint or '–'}   previous published: {v.previous_fingerprint or '–'}")
    fails = v.failed_gates.to_dicts()
    if fails:
        out.append(
            f"  failed gates: {v.counts['blocking_gates_failed']} blocking, {v.counts['warn_gates_failed']} WARN"
            + (f", {v.counts['subjects_insufficient']} insufficient" if v.counts["subjects_insufficient"] else "")
        )
        # one line per failing gate (blocking first): how many subjects, which, the first reason
        groups = list(v.failed_gates.group_by("gate", maintain_order=True))
        for (gate,), part in groups[:max_failed]:
            rows = part.to_dicts()
            sev = "ERROR" if rows[0]["blocking"] else "WARN "
            subjects = [r["subject"] for r in rows if r.get("subject")]
            who = ", ".join(subjects[:2]) + (f" +{len(subjects) - 2}" if len(subjects) > 2 else "")
            head = f"{gate} ×{len(rows)} ({who})" if len(rows) > 1 else gate_label(rows[0])
            out.append(f"    {sev} {head}: {one_line(rows[0].get('reason') or '', 100)}")
        if len(groups) > max_failed:
            out.append(f"    … {len(groups) - max_failed} more gate(s) (gates.md)")
    else:
        out.append("  failed gates: none")
    for r in v.heroes.to_dicts():
        # the tail-taming arm is an A/B of one arm against the baseline, not a pack with a hero
        label = "tail A/B" if r["pack"] == "tail_taming" else f"hero {r['pack']}"
        value = (
            r["hero"]
            if r["pack"] != "tail_taming"
            else ("promoted " + r["hero"] if r["hero"] != "none" else "not promoted")
        )
        out.append(f"  {label}: {value}" + ("" if r["hero"] != "none" else f" ({one_line(r['reason'], 100)})"))
    for r in v.canary.to_dicts():
        out.append(f"  canary {r['test']}: {r['path']}")
    out.append(f"  {v.aa}")
    if v.previous_week is None:
        out.append("  vs previous published week: none yet")
    else:
        out.append(f"  vs {v.previous_week}:")
        for r in v.focus_deltas().to_dicts():
            out.append(
                f"    {r['system']} {WEEK_METRICS.get(r['metric'], r['metric'])}: {r['delta']:+.4f} "
                f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]" + (" (moved)" if r["moved"] else "")
            )
    return out


def verdict_markdown(v: Verdict) -> str:
    """The whole verdict as one markdown document (what `lens-eval run` writes to verdict.md)."""
    parts = [
        f"# Week {v.partition}: {'PUBLISHED' if v.published else 'NOT PUBLISHED'}",
        v.why,
        f"fingerprint `{v.fingerprint or '–'}`, previous published `{v.previous_fingerprint or '–'}`",
        "## Failed gates",
        failed_gates_markdown(v, limit=10_000),
        "## Heroes",
        heroes_markdown(v),
        "## Canary",
        canary_markdown(v),
        "## A/A",
        v.aa,
        "## Against the previous published week",
        deltas_markdown(v),
        "## Gates",
        gates_markdown(v),
    ]
    return "\n\n".join(parts) + "\n"


def gate_table_markdown(gates: pl.DataFrame) -> str:
    """Every gate row, failures first (blocking before WARN), then insufficient, then passes."""
    if gates.height == 0:
        return "_no gates_"
    rows = failures_first(gates).to_dicts()
    return md_table(rows, ["gate", "subject", "status", "blocking", "value", "threshold", "reason"])


def write_report(out_dir: Path, v: Verdict, gates: pl.DataFrame) -> Path:
    """The week's report files: summary.txt (what `lens-eval run` prints), verdict.md (the whole
    verdict) and gates.md (every gate row, failures first). Returns the directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "summary.txt", "\n".join(summary_lines(v)) + "\n")
    atomic_write_text(out_dir / "verdict.md", verdict_markdown(v))
    atomic_write_text(out_dir / "gates.md", f"# Gates, week {v.partition}\n\n" + gate_table_markdown(gates) + "\n")
    return out_dir
