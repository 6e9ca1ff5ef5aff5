"""The week's release verdict (issue 23): what a reader needs first, in this order.

1. published or not, and why (the blocking gates that kept the last green bundle published);
2. the bundle's fingerprint and the one published before it;
3. the failed gates, blocking first, each with its reason (insufficient is never a pass);
4. each pack's hero, or why it has none;
5. the canary path of each test arm;
6. the A/A verdict (is the setup's own noise significant?);
7. Δ of the headline metrics (nDCG@10, SLA-Recall@50) against the previous published week, with
   a 95% CI, when a previous published week exists.

Pure: the inputs are the week's tables (gate summary, heroes, canary decisions, comparisons,
scores), what release_bundle recorded, and the previous published week's scores (found from
the bundles' attestations under the data dir). `verdict_text` renders it; the Dagster asset
`release_verdict` records it as metadata; `lens-eval run` prints its summary.

Week-over-week Δ: the two weeks are separate samples of queries and runs, so the CI is the
unpaired normal approximation from the two weeks' own bootstrap CIs (standard error = CI width /
(2·1.96) each, combined in quadrature). It is a guide to what moved, not a decision (decisions
are the paired comparisons within a week).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from lens_core.common.contracts import BUNDLE_FILES, SLICE_ALL
from lens_core.decide.gate_view import FAIL, failures_first, gate_overview, one_line

WEEK_METRICS: dict[str, str] = {"ndcg_10": "nDCG@10", "sla_recall_50": "SLA-Recall@50"}
Z95 = 1.959963984540054


@dataclass
class BundleOutcome:
    """What release_bundle recorded for the week."""

    fingerprint: str | None
    published: bool
    previous_published: str | None = None
    failed_blocking: list[str] = field(default_factory=list)
    bundle: str | None = None
    site: str | None = None
    refused: str | None = None  # green, but not published (e.g. older than the published week)


OUTCOME_SCHEMA = {
    "fingerprint": pl.String,
    "published": pl.Boolean,
    "previous_published": pl.String,
    "failed_blocking": pl.List(pl.String),
    "bundle": pl.String,
    "site": pl.String,
    "refused": pl.String,
}


def outcome_frame(o: BundleOutcome) -> pl.DataFrame:
    """The outcome as a one-row table (release_bundle writes it to staging for release_verdict)."""
    return pl.DataFrame(
        [
            {
                "fingerprint": o.fingerprint,
                "published": o.published,
                "previous_published": o.previous_published,
                "failed_blocking": list(o.failed_blocking),
                "bundle": o.bundle,
                "site": o.site,
                "refused": o.refused,
            }
        ],
        schema=OUTCOME_SCHEMA,
    )


def outcome_from_frame(df: pl.DataFrame) -> BundleOutcome | None:
    if df.height == 0:
        return None
    r = df.row(-1, named=True)
    return BundleOutcome(
        fingerprint=r.get("fingerprint"),
        published=bool(r.get("published")),
        previous_published=r.get("previous_published"),
        failed_blocking=list(r.get("failed_blocking") or []),
        bundle=r.get("bundle"),
        site=r.get("site"),
        refused=r.get("refused"),
    )


@dataclass
class PreviousWeek:
    """The previous published week: its partition, fingerprint and scores."""

    partition: str
    fingerprint: str
    scores: pl.DataFrame


@dataclass
class Verdict:
    partition: str
    published: bool
    headline: str  # one line: PUBLISHED / NOT PUBLISHED, the fingerprint, why
    why: str
    fingerprint: str | None
    previous_fingerprint: str | None
    failed_gates: pl.DataFrame  # gate, subject, blocking, status, value, threshold, reason
    gates: pl.DataFrame  # gate_view.gate_overview
    heroes: pl.DataFrame  # pack, hero, reason
    canary: pl.DataFrame  # test, path, outcome
    aa: str
    aa_significant: bool | None
    previous_week: str | None
    deltas: pl.DataFrame  # system, metric, this_week, previous_week, delta, ci_low, ci_high, moved
    counts: dict[str, int]
    focus: list[str] = field(default_factory=list)  # the baseline and the heroes

    def focus_deltas(self) -> pl.DataFrame:
        """The Δ rows of the baseline and the heroes (all rows when there is no focus)."""
        if not self.focus:
            return self.deltas
        return self.deltas.filter(pl.col("system").is_in(self.focus))

    def numbers(self) -> dict[str, float | int]:
        """Numbers to chart across weeks: published 0/1, gate counts, heroes promoted, and the
        baseline's and heroes' Δ against the previous published week."""
        out: dict[str, float | int] = {"published": int(self.published), **self.counts}
        for r in self.focus_deltas().iter_rows(named=True):
            out[f"delta_{r['metric']}/{r['system']}"] = float(r["delta"])
        return out


# ----------------------------------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------------------------------
def failed_gates(gates: pl.DataFrame) -> pl.DataFrame:
    """The failing subjects, blocking first, each with its reason."""
    cols = ["gate", "subject", "blocking", "status", "value", "threshold", "reason"]
    if gates.height == 0:
        return pl.DataFrame(
            schema={
                "gate": pl.String,
                "subject": pl.String,
                "blocking": pl.Boolean,
                "status": pl.String,
                "value": pl.Float64,
                "threshold": pl.String,
                "reason": pl.String,
            }
        )
    ordered = failures_first(gates)
    return ordered.filter(pl.col("status") == FAIL).select([c for c in cols if c in ordered.columns])


def hero_lines(heroes: pl.DataFrame) -> pl.DataFrame:
    """pack, hero (or "none"), reason."""
    if heroes.height == 0:
        return pl.DataFrame(schema={"pack": pl.String, "hero": pl.String, "reason": pl.String})
    return heroes.select(
        "pack",
        pl.col("hero").fill_null("none"),
        pl.col("reason").fill_null("").map_elements(one_line, return_dtype=pl.String),
    )


def canary_paths(decisions: pl.DataFrame) -> pl.DataFrame:
    """Per test arm, the ladder it walked (`A/A ok → 5% → 25% → 50%: hold`) and how it ended."""
    schema = {"test": pl.String, "path": pl.String, "outcome": pl.String}
    if decisions.height == 0 or "test" not in decisions.columns:
        return pl.DataFrame(schema=schema)
    rows = []
    order = [c for c in ("seq",) if c in decisions.columns]
    for (test,), part in decisions.group_by("test", maintain_order=True):
        part = part.sort(order, nulls_last=False) if order else part
        recs = part.to_dicts()
        ab = [r for r in recs if r.get("phase") != "aa"]
        last = recs[-1]
        if not ab:
            outcome = last.get("action") or "none"
            rows.append({"test": test, "path": f"A/A: {outcome}", "outcome": one_line(last.get("reason") or "")})
            continue
        steps = ["A/A ok"]
        for r in ab:
            pct = r.get("from_pct")
            if pct is not None and (len(steps) == 1 or steps[-1] != f"{pct}%"):
                steps.append(f"{pct}%")
            if r.get("action") == "advance" and r.get("to_pct") is not None:
                steps.append(f"{r['to_pct']}%")
        action = last.get("action") or "?"
        tail = " → 0% (reverted)" if action == "revert" else ""
        path = " → ".join(steps) + tail + f": {action}"
        rows.append({"test": test, "path": path, "outcome": one_line(last.get("reason") or "")})
    return pl.DataFrame(rows, schema=schema)


def aa_verdict(comparisons: pl.DataFrame, alpha: float, metric: str = "ndcg_10") -> tuple[bool | None, str]:
    """(significant, one line) for the A/A pair on `metric`, slice all."""
    if comparisons.height == 0 or "test" not in comparisons.columns:
        return None, "A/A: no comparison"
    aa = comparisons.filter(
        pl.col("test").str.ends_with("__aa") & (pl.col("slice") == SLICE_ALL) & (pl.col("metric") == metric)
    )
    if aa.height == 0:
        return None, "A/A: no A/A pair in the comparisons"
    r = aa.row(0, named=True)
    p = r.get("p_holm")
    label = WEEK_METRICS.get(metric, metric)
    ci = _ci(r.get("ci_low"), r.get("ci_high"))
    if p is None:
        return None, f"A/A {r['test']}: Δ{label} {_signed(r.get('delta'))} {ci}, not tested"
    sig = p < alpha
    word = "SIGNIFICANT (setup noise: heroes are blocked)" if sig else "clean"
    return sig, f"A/A {word}: Δ{label} {_signed(r.get('delta'))} {ci}, p_holm {p:.3g} (α {alpha:g})"


def week_deltas(
    this: pl.DataFrame, previous: pl.DataFrame, metrics: tuple[str, ...] = tuple(WEEK_METRICS)
) -> pl.DataFrame:
    """Δ (this − previous) of each metric for every system in both weeks (slice all), with the
    unpaired 95% CI from the two weeks' bootstrap CIs; `moved` when the CI excludes 0."""
    schema = {
        "system": pl.String,
        "metric": pl.String,
        "this_week": pl.Float64,
        "previous_week": pl.Float64,
        "delta": pl.Float64,
        "ci_low": pl.Float64,
        "ci_high": pl.Float64,
        "moved": pl.Boolean,
    }

    def pick(df: pl.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
        if df.height == 0:
            return {}
        s = df.filter((pl.col("slice") == SLICE_ALL) & pl.col("metric").is_in(list(metrics)))
        return {(r["system"], r["metric"]): r for r in s.iter_rows(named=True)}

    a, b = pick(this), pick(previous)
    rows = []
    for sys_name, metric in sorted(set(a) & set(b), key=lambda k: (metrics.index(k[1]), k[0])):
        x, y = a[(sys_name, metric)], b[(sys_name, metric)]
        if x["mean"] is None or y["mean"] is None:
            continue
        d = float(x["mean"]) - float(y["mean"])
        se = math.sqrt(_se(x) ** 2 + _se(y) ** 2)
        lo, hi = d - Z95 * se, d + Z95 * se
        rows.append(
            {
                "system": sys_name,
                "metric": metric,
                "this_week": float(x["mean"]),
                "previous_week": float(y["mean"]),
                "delta": d,
                "ci_low": lo,
                "ci_high": hi,
                "moved": bool(se > 0 and (lo > 0 or hi < 0)),
            }
        )
    return pl.DataFrame(rows, schema=schema)


def _se(r: dict[str, Any]) -> float:
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0
    return max(0.0, float(hi) - float(lo)) / (2 * Z95)


# ----------------------------------------------------------------------------------------------
# The previous published week, from the bundles' attestations
# ----------------------------------------------------------------------------------------------
def published_bundles(data_dir: Path) -> list[dict[str, Any]]:
    """Every bundle under `data_dir/bundles/` that was published (all blocking gates green) and
    names its partition: {fingerprint, partition, created_ms, path}, oldest first."""
    out = []
    for att_path in sorted((Path(data_dir) / "bundles").glob(f"*/{BUNDLE_FILES['attestation']}")):
        try:
            att = json.loads(att_path.read_text())
        except (OSError, ValueError):
            continue
        if not att.get("all_blocking_green") or not att.get("partition"):
            continue
        out.append(
            {
                "fingerprint": att.get("fingerprint", att_path.parent.name),
                "partition": str(att["partition"]),
                "created_ms": int(att.get("created_ms") or 0),
                "path": att_path.parent,
            }
        )
    return sorted(out, key=lambda b: (b["partition"], b["created_ms"]))


def previous_published_week(data_dir: Path, partition: str) -> PreviousWeek | None:
    """The newest published bundle of the latest week before `partition`, with its scores."""
    earlier = [b for b in published_bundles(data_dir) if b["partition"] < partition]
    if not earlier:
        return None
    b = earlier[-1]
    p = b["path"] / BUNDLE_FILES["scores"]
    if not p.is_file():
        return None
    return PreviousWeek(partition=b["partition"], fingerprint=b["fingerprint"], scores=pl.read_parquet(p))


# ----------------------------------------------------------------------------------------------
# The verdict
# ----------------------------------------------------------------------------------------------
def release_verdict(
    partition: str,
    outcome: BundleOutcome | None,
    gates: pl.DataFrame,
    heroes: pl.DataFrame,
    canary_decisions: pl.DataFrame,
    comparisons: pl.DataFrame,
    scores: pl.DataFrame,
    previous: PreviousWeek | None,
    alpha: float = 0.05,
    baseline: str | None = None,
    aa: tuple[bool | None, str] | None = None,
) -> Verdict:
    """The week's verdict. `aa`: (broken, one line) of the A/A decision the week took (the
    TOST of the hero decisions, issue 17); without it, the A/A pair's comparison row is shown."""
    failed = failed_gates(gates)
    overview = gate_overview(gates)
    blocking_failed = failed.filter(pl.col("blocking"))
    warn_failed = failed.filter(~pl.col("blocking"))
    insufficient = int(overview["insufficient"].sum()) if overview.height else 0
    published = bool(outcome.published) if outcome is not None else False
    last_green = outcome.previous_published if outcome is not None else None
    if outcome is None:
        why = "no bundle was recorded for this week (release_bundle did not run)"
        if blocking_failed.height:
            why += f"; blocking gate(s) failed: {_gate_list(blocking_failed)}"
    elif published:
        why = "every blocking gate is green"
        if warn_failed.height:
            why += f"; {warn_failed.height} WARN gate failure(s) ({_gate_names(warn_failed)})"
        if insufficient:
            why += f"; {insufficient} subject(s) judged on too little data"
    elif outcome.refused and not blocking_failed.height:
        why = f"every blocking gate is green, but {outcome.refused}"
    else:
        names = _gate_list(blocking_failed) if blocking_failed.height else ", ".join(outcome.failed_blocking)
        why = f"blocking gate(s) failed: {names or 'unknown'}; the last green bundle stays published ({last_green or 'none'})"
    fp = outcome.fingerprint if outcome is not None else None
    state = "PUBLISHED" if published else "NOT PUBLISHED"
    headline = one_line(f"{state} {fp or '(no bundle)'} for week {partition}: {why}", 300)
    hero_df = hero_lines(heroes)
    aa_sig, aa_line = aa if aa is not None else aa_verdict(comparisons, alpha)
    deltas = week_deltas(scores, previous.scores) if previous is not None else week_deltas(scores, pl.DataFrame())
    counts = {
        "blocking_gates_failed": int(blocking_failed.height),
        "warn_gates_failed": int(warn_failed.height),
        "subjects_insufficient": insufficient,
        "heroes_promoted": int((hero_df["hero"] != "none").sum()) if hero_df.height else 0,
    }
    return Verdict(
        partition=partition,
        published=published,
        headline=headline,
        why=why,
        fingerprint=fp,
        previous_fingerprint=last_green,
        failed_gates=failed,
        gates=overview,
        heroes=hero_df,
        canary=canary_paths(canary_decisions),
        aa=aa_line,
        aa_significant=aa_sig,
        previous_week=f"{previous.partition} ({previous.fingerprint})" if previous is not None else None,
        deltas=deltas,
        counts=counts,
        focus=([baseline] if baseline else []) + [h for h in hero_df["hero"].to_list() if h != "none"],
    )


def gate_label(r: dict[str, Any]) -> str:
    return r["gate"] + (f"[{r['subject']}]" if r.get("subject") else "")


def _gate_list(df: pl.DataFrame, limit: int = 3) -> str:
    """`pool (9 subjects; lens_v22: judged@10 = …)`, one entry per gate, at most `limit` gates."""
    parts = []
    groups = list(df.group_by("gate", maintain_order=True))
    for (gate,), part in groups[:limit]:
        r = part.row(0, named=True)
        who = f"{r['subject']}: " if r.get("subject") else ""
        n = f"{part.height} subjects; " if part.height > 1 else ""
        parts.append(f"{gate} ({n}{who}{one_line(r.get('reason') or '', 80)})")
    return "; ".join(parts) + (f"; +{len(groups) - limit} more gate(s)" if len(groups) > limit else "")


def _gate_names(df: pl.DataFrame) -> str:
    counts = df.group_by("gate", maintain_order=True).len()
    return ", ".join(f"{g}×{n}" if n > 1 else g for g, n in counts.iter_rows())


def _signed(v: float | None, fmt: str = "{:+.4f}") -> str:
    return "–" if v is None or not math.isfinite(v) else fmt.format(v)


def _ci(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return ""
    return f"[{lo:+.4f}, {hi:+.4f}]"
