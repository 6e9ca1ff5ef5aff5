"""The transparency site of a release bundle (issue 9; SPEC sections 7-10, 12).

Pure: a bundle directory in, one self-contained `index.html` out. No dagster import, no network:
the page carries its CSS inline, draws its plots as inline SVG (CI whiskers, canary timeline)
and inlines the calibration reliability PNGs as base64 `data:` URIs. A Content-Security-Policy
meta tag forbids scripts and every network fetch, and every piece of text from the bundle
(query text, paths, reasons, system names) goes through `html.escape`, so a bundle cannot inject
markup. The page is written as ASCII (non-ASCII characters become character references).

A bundle that lacks an artifact still builds: each section that needs it shows a visible
`missing: <relative path>` notice, and the page header lists every missing artifact. Optional
inputs (canary tables, pool audit diff, LVM evaluation) say "not in this bundle" when absent.

    build_site(bundle_dir, out_dir=None, lvm_dir=None) -> Path   # <bundle>/site/index.html
    publish_site(data_dir) -> Path                               # $LENS_DATA_DIR/site (atomic swap)
    register(subparsers)                                         # `lens-eval site BUNDLE [--out DIR]`

The site is a derived view, not an artifact: it is not in the attestation (it shows the
fingerprint and the sha256 of `attestation.json` it was built from).

Why this is one module: one static page: its sections share the bundle reader (`_Bundle`) and the HTML/SVG formatting helpers, and are rendered in one pass.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import polars as pl

from lens_core.common.contracts import BUNDLE_FILES, PUBLISHED_POINTER, SLICE_ALL, SLICE_DIMENSIONS
from lens_core.common.hashing import atomic_write_text, sha256_file
from lens_core.measures.registry import PIPELINE_MEASURES
from lens_core.measures.registry import label as measure_label
from lens_core.publish.bundle import publish_lock, publish_pointer

SITE_DIR = "site"
INDEX = "index.html"
ATTESTATION_HREF = "../attestation.json"
CANARY_FILES = ("tables/canary_steps.csv", "tables/canary_windows.csv", "tables/canary_decisions.csv")
POOL_AUDIT_FILE = "tables/pool_audit.csv"
GATES_FILE = "tables/gates.csv"
HEROES_FILE = "tables/heroes.csv"
PROMOTION_FILE = "tables/promotion_rules.parquet"
QUERIES_FILE = "queries.parquet"
CALIBRATION_FILE = "calibration/calibration.parquet"
PARITY_FILE = "calibration/parity.parquet"
LVM_EVAL_FILE = "eval_scores.parquet"
LVM_CHAMPION_FILE = "champion.json"
BASELINE_PACK = "baseline"
# Measures are labelled with their registry names (issue 19: `measure_label`, nDCG@10, SLA-R@50).
WHISKER_METRICS = tuple((m, measure_label(m)) for m in ("ndcg_10", "sla_recall_50"))
# A registry measure in the scores beyond the per-query contract's (a configured extra of
# `measures:`) gets a leaderboard column of its own, after the fixed ones.
HARDEST_N = 12
MAX_INLINE_PNG_BYTES = 6 << 20  # total budget for inlined reliability PNGs
TAIL_RATIO_MAX = 2.0  # SPEC section 7 tail gate, drawn as a reference in the latency table

# Files a complete bundle holds; a missing one is listed in the header.
EXPECTED = (
    BUNDLE_FILES["attestation"],
    BUNDLE_FILES["scores"],
    BUNDLE_FILES["hero_table"],
    BUNDLE_FILES["comparisons"],
    BUNDLE_FILES["per_query"],
    BUNDLE_FILES["pool_counts"],
    GATES_FILE,
    HEROES_FILE,
    PROMOTION_FILE,
    QUERIES_FILE,
    CALIBRATION_FILE,
    PARITY_FILE,
)


class SiteError(ValueError):
    """The site cannot be built at all (no bundle there). Artifacts that are merely missing are
    reported on the page instead."""


# ----------------------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------------------
def esc(v: Any) -> str:
    """Escaped text of any value (None -> empty)."""
    return html.escape("" if v is None else str(v), quote=True)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fnum(v: Any, nd: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if _finite(v):
        return f"{v:.{nd}f}" if isinstance(v, float) else str(v)
    return "n/a" if v is None or isinstance(v, float) else esc(v)


def fci(mean: Any, lo: Any, hi: Any, nd: int = 3) -> str:
    if not _finite(mean):
        return "n/a"
    if _finite(lo) and _finite(hi):
        return f'{mean:.{nd}f} <span class="ci">[{lo:.{nd}f}, {hi:.{nd}f}]</span>'
    return f"{mean:.{nd}f}"


def fdelta(d: Any, lo: Any, hi: Any, nd: int = 3) -> str:
    if not _finite(d):
        return "n/a"
    cls = "pos" if _finite(lo) and lo > 0 else "neg" if _finite(hi) and hi < 0 else ""
    ci = f' <span class="ci">[{lo:+.{nd}f}, {hi:+.{nd}f}]</span>' if _finite(lo) and _finite(hi) else ""
    return f'<span class="{cls}">{d:+.{nd}f}</span>{ci}'


def badge(status: Any) -> str:
    s = str(status or "unknown").lower()
    cls = {
        "pass": "ok",
        "green": "ok",
        "true": "ok",
        "advance": "ok",
        "complete": "ok",
        "published": "ok",
        "fail": "bad",
        "red": "bad",
        "false": "bad",
        "revert": "bad",
        "insufficient": "warn",
        "hold": "warn",
    }.get(s, "info")
    return f'<span class="badge {cls}" data-status="{esc(s)}">{esc(s)}</span>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    cls: str = "",
    attrs: Sequence[str] | None = None,
    caption: str = "",
) -> str:
    """An HTML table; `headers` are plain text (escaped here), cells are already-safe HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        a = f" {attrs[i]}" if attrs else ""
        body.append(f"<tr{a}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (
        f'<div class="tw"><table class="{esc(cls)}">{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def frame_table(df: pl.DataFrame, cls: str = "", nd: int = 4, status_cols: Sequence[str] = ("status",)) -> str:
    """Any DataFrame as a table: numbers formatted, status-like columns as badges, text escaped."""
    rows = []
    for r in df.iter_rows(named=True):
        cells = []
        for c in df.columns:
            v = r[c]
            if c in status_cols and v is not None:
                cells.append(badge(v))
            elif isinstance(v, (float, int, bool)) or v is None:
                cells.append(fnum(v, nd))
            else:
                cells.append(esc(v))
        rows.append(cells)
    return table(df.columns, rows, cls)


# ----------------------------------------------------------------------------------------------
# Loading with missing/unreadable bookkeeping
# ----------------------------------------------------------------------------------------------
@dataclass
class _Bundle:
    root: Path
    missing: list[str] = field(default_factory=list)  # expected artifacts not there
    unreadable: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def _load(self, rel: str, reader: Callable[[Path], Any], need: Sequence[str] = (), optional: bool = False):
        if rel in self._cache:
            return self._cache[rel]
        p = self.path(rel)
        out = None
        if not p.is_file():
            if not optional and rel not in self.missing:
                self.missing.append(rel)
        else:
            try:
                out = reader(p)
                if isinstance(out, pl.DataFrame):
                    lack = [c for c in need if c not in out.columns]
                    if lack:
                        raise ValueError(f"lacks column(s) {', '.join(lack)}")
            except Exception as e:  # noqa: BLE001 - a broken artifact is reported on the page
                self.unreadable[rel] = f"{type(e).__name__}: {e}"
                out = None
        self._cache[rel] = out
        return out

    def csv(self, rel: str, need: Sequence[str] = (), optional: bool = False) -> pl.DataFrame | None:
        return self._load(rel, lambda p: pl.read_csv(p, infer_schema_length=10000), need, optional)

    def parquet(self, rel: str, need: Sequence[str] = (), optional: bool = False) -> pl.DataFrame | None:
        return self._load(rel, pl.read_parquet, need, optional)

    def json(self, rel: str, optional: bool = False) -> dict | None:
        return self._load(rel, lambda p: json.loads(p.read_text()), (), optional)

    def notice(self, *rels: str) -> str:
        """The visible notice for artifacts a section could not use."""
        out = []
        for rel in rels:
            if rel in self.unreadable:
                out.append(
                    f'<p class="missing" data-missing="{esc(rel)}">unreadable: {esc(rel)} '
                    f"({esc(self.unreadable[rel])})</p>"
                )
            elif not self.path(rel).is_file():
                out.append(f'<p class="missing" data-missing="{esc(rel)}">missing: {esc(rel)}</p>')
        return "".join(out)


def absent(rel: str, why: str) -> str:
    return f'<p class="absent" data-absent="{esc(rel)}">not in this bundle: {esc(rel)} ({esc(why)})</p>'


# ----------------------------------------------------------------------------------------------
# SVG plots
# ----------------------------------------------------------------------------------------------
def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-12:
        ticks.append(round(t, 10))
        t += step
    return ticks


def whisker_svg(
    rows: list[dict], metric: str, label: str, baseline: str | None, slice_name: str, clamp01: bool = True
) -> str:
    """One row per system: a point at the mean, a line from ci_low to ci_high with caps, and a
    dashed line at the baseline's mean. rows: {system, mean, ci_low, ci_high}."""
    rows = [r for r in rows if _finite(r.get("mean"))]
    if not rows:
        return f'<p class="absent">no {esc(label)} values for this slice</p>'
    name_w, plot_w, right, row_h, top, bottom = 250, 400, 20, 22, 26, 30
    width = name_w + plot_w + right
    height = top + row_h * len(rows) + bottom
    vals = [v for r in rows for v in (r["mean"], r.get("ci_low"), r.get("ci_high")) if _finite(v)]
    lo, hi = min(vals), max(vals)
    pad = max((hi - lo) * 0.08, 0.005)
    lo, hi = lo - pad, hi + pad
    if clamp01:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    if hi <= lo:
        hi = lo + 0.01

    def x(v: float) -> float:
        return name_w + (min(max(v, lo), hi) - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg class="whiskers" data-metric="{esc(metric)}" data-slice="{esc(slice_name)}" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet" '
        f'role="img" aria-label="{esc(label)} with 95% CI per system, slice {esc(slice_name)}">',
        f'<text x="{name_w}" y="16" class="ttl">{esc(label)} (point = mean, whisker = 95% CI)</text>',
    ]
    axis_y = top + row_h * len(rows) + 4
    for t in _nice_ticks(lo, hi):
        tx = x(t)
        parts.append(
            f'<line class="grid" x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{axis_y}"/>'
            f'<text class="tick" x="{tx:.1f}" y="{axis_y + 14}" text-anchor="middle">{t:g}</text>'
        )
    base = next((r for r in rows if r["system"] == baseline), None)
    if base is not None:
        bx = x(base["mean"])
        parts.append(f'<line class="baseline" x1="{bx:.1f}" y1="{top - 4}" x2="{bx:.1f}" y2="{axis_y}"/>')
    for i, r in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        m, a, b = r["mean"], r.get("ci_low"), r.get("ci_high")
        is_base = r["system"] == baseline
        title = (
            f"{r['system']}: {label} {m:.4f}"
            + (f" [{a:.4f}, {b:.4f}]" if _finite(a) and _finite(b) else "")
            + f" (n={r.get('n', 'n/a')})"
        )
        g = [
            f'<g class="whisker{" base" if is_base else ""}" data-system="{esc(r["system"])}" '
            f'data-metric="{esc(metric)}" data-mean="{m:.6f}" data-ci-low="{fnum(a, 6)}" data-ci-high="{fnum(b, 6)}">',
            f"<title>{esc(title)}</title>",
            f'<text class="name" x="{name_w - 8}" y="{cy + 4:.1f}" text-anchor="end">{esc(r["system"])}</text>',
        ]
        if _finite(a) and _finite(b):
            xa, xb = x(a), x(b)
            g.append(
                f'<line class="ci" x1="{xa:.1f}" y1="{cy:.1f}" x2="{xb:.1f}" y2="{cy:.1f}"/>'
                f'<line class="cap" x1="{xa:.1f}" y1="{cy - 5:.1f}" x2="{xa:.1f}" y2="{cy + 5:.1f}"/>'
                f'<line class="cap" x1="{xb:.1f}" y1="{cy - 5:.1f}" x2="{xb:.1f}" y2="{cy + 5:.1f}"/>'
            )
        g.append(f'<circle class="pt" cx="{x(m):.1f}" cy="{cy:.1f}" r="4"/></g>')
        parts.append("".join(g))
    parts.append("</svg>")
    return "".join(parts)


def canary_timeline_svg(windows: pl.DataFrame, decisions: pl.DataFrame | None, test: str) -> str:
    """Windows in stream order as cells coloured by status, grouped by phase/step with the
    step's percentage above; revert/advance/complete decisions marked under the cell."""
    if windows.height == 0:
        return f'<p class="absent">no judged canary windows for {esc(test)}</p>'
    cell, gap, left, top = 14, 8, 10, 34
    acts: dict[tuple, str] = {}
    if decisions is not None and decisions.height:
        for d in decisions.iter_rows(named=True):
            if d.get("action") in ("advance", "revert", "complete") and d.get("window") is not None:
                acts[(d.get("phase"), d.get("step"), d.get("window"))] = d["action"]
    parts, labels = [], []
    xpos, prev_key = left, None
    for w in windows.iter_rows(named=True):
        key = (w.get("phase"), w.get("step"))
        if key != prev_key:
            if prev_key is not None:
                xpos += gap
            lab = "A/A" if w.get("phase") == "aa" else f"{w.get('pct')}%"
            labels.append(f'<text class="tick" x="{xpos}" y="{top - 18}">{esc(lab)}</text>')
            prev_key = key
        st = str(w.get("status") or "unknown")
        tip = f"{w.get('phase')} step {w.get('step')} at {w.get('pct')}%, window {w.get('window')}: {st}" + (
            f" ({w.get('reason')})" if w.get("reason") else ""
        )
        parts.append(
            f'<rect class="cw {esc(st)}" data-status="{esc(st)}" x="{xpos}" y="{top - 12}" '
            f'width="{cell - 2}" height="{cell}"><title>{esc(tip)}</title></rect>'
        )
        act = acts.get((w.get("phase"), w.get("step"), w.get("window")))
        if act:
            sym = {"revert": "x", "advance": "^", "complete": "*"}[act]
            parts.append(
                f'<text class="act {esc(act)}" x="{xpos + (cell - 2) / 2}" y="{top + 14}" '
                f'text-anchor="middle">{sym}<title>{esc(act)}</title></text>'
            )
        xpos += cell
    width = xpos + left
    return (
        f'<svg class="canary-timeline" data-test="{esc(test)}" viewBox="0 0 {width} {top + 22}" '
        f'width="{min(width, 1100)}" preserveAspectRatio="xMinYMin meet" role="img" '
        f'aria-label="canary windows for {esc(test)}">' + "".join(labels) + "".join(parts) + "</svg>"
    )


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def _systems_info(att: dict | None, hero: pl.DataFrame | None) -> tuple[dict[str, str], str | None]:
    packs: dict[str, str] = {}
    if att and isinstance(att.get("systems"), dict):
        packs.update({k: str(v.get("pack", "")) for k, v in att["systems"].items() if isinstance(v, dict)})
    if hero is not None and "pack" in hero.columns:
        for s, p in zip(hero["system"].to_list(), hero["pack"].to_list()):
            packs.setdefault(s, p)
    baseline = next((s for s, p in packs.items() if p == BASELINE_PACK), None)
    return packs, baseline


def _slice_sort_key(s: str) -> tuple:
    if s == SLICE_ALL:
        return (0, "")
    dim = s.split("=", 1)[0]
    return (1 + (SLICE_DIMENSIONS.index(dim) if dim in SLICE_DIMENSIONS else len(SLICE_DIMENSIONS)), s)


def section_leaderboard(b: _Bundle, packs: dict[str, str], baseline: str | None) -> str:
    scores = b.parquet(BUNDLE_FILES["scores"], need=("system", "slice", "metric", "mean", "ci_low", "ci_high", "n"))
    comps = b.parquet(
        BUNDLE_FILES["comparisons"], need=("control", "test", "slice", "metric", "delta", "ci_low", "ci_high")
    )
    out = ['<section id="leaderboard"><h2>Leaderboard</h2>']
    out.append(b.notice(BUNDLE_FILES["scores"], BUNDLE_FILES["comparisons"]))
    if scores is None:
        out.append("</section>")
        return "".join(out)
    wide = scores.pivot(
        on="metric", index=["system", "slice"], values=["mean", "ci_low", "ci_high", "n"], aggregate_function="first"
    )
    deltas: dict[tuple[str, str], dict] = {}
    if comps is not None and baseline:
        d = comps.filter((pl.col("control") == baseline) & (pl.col("metric") == "ndcg_10"))
        for r in d.iter_rows(named=True):
            deltas[(r["test"], r["slice"])] = r
    slices = sorted(wide["slice"].unique().to_list(), key=_slice_sort_key)
    extras = extra_measure_metrics(scores["metric"].unique().to_list())
    out.append(
        f'<p class="note">Systems ranked by {esc(measure_label("ndcg_10"))} (span-only credit) in each slice. '
        + (
            f"Baseline: <b>{esc(baseline)}</b> (dashed line in the plots; deltas are paired, vs this "
            "system, with Holm-adjusted p)."
            if baseline
            else "No baseline system found."
        )
        + "</p>"
    )
    groups: dict[str, list[str]] = {}
    for s in slices:
        groups.setdefault(s.split("=", 1)[0] if "=" in s else SLICE_ALL, []).append(s)
    for gname, gslices in groups.items():
        inner = []
        for s in gslices:
            inner.append(_slice_block(wide.filter(pl.col("slice") == s), s, packs, baseline, deltas, extras))
        if gname == SLICE_ALL:
            out.append("".join(inner))
        else:
            out.append(
                f'<details class="slices" data-dimension="{esc(gname)}"><summary>Slices by {esc(gname)} '
                f"({len(gslices)})</summary>{''.join(inner)}</details>"
            )
    out.append("</section>")
    return "".join(out)


def extra_measure_metrics(metrics: Iterable[str]) -> list[str]:
    """The configured extra measures among score metrics: registry measures (a column with a
    registry name, `P_5` = P@5) beyond the per-query contract's, sorted."""
    return sorted(m for m in set(metrics) if m not in PIPELINE_MEASURES and measure_label(m) != m)


def _col(r: dict, kind: str, metric: str) -> Any:
    return r.get(f"{kind}_{metric}")


def _slice_block(
    w: pl.DataFrame,
    s: str,
    packs: dict[str, str],
    baseline: str | None,
    deltas: dict[tuple[str, str], dict],
    extras: Sequence[str] = (),
) -> str:
    if "mean_ndcg_10" in w.columns:
        w = w.sort(["mean_ndcg_10", "system"], descending=[True, False], nulls_last=True)
    rows, attrs = [], []
    recs = w.to_dicts()
    for i, r in enumerate(recs, 1):
        sysn = r["system"]
        dl = deltas.get((sysn, s))
        n = _col(r, "n", "ndcg_10")
        rows.append(
            [
                str(i),
                f'<span class="sys">{esc(sysn)}</span>'
                + (' <span class="tag">baseline</span>' if sysn == baseline else ""),
                esc(packs.get(sysn, "")),
                fnum(n),
                fci(_col(r, "mean", "ndcg_10"), _col(r, "ci_low", "ndcg_10"), _col(r, "ci_high", "ndcg_10")),
                (
                    ""
                    if sysn == baseline
                    else fdelta(dl["delta"], dl["ci_low"], dl["ci_high"])
                    + (
                        f' <span class="ci">p<sub>Holm</sub> {dl["p_holm"]:.3f}</span>'
                        if dl and _finite(dl.get("p_holm"))
                        else ""
                    )
                )
                if dl
                else ("" if sysn == baseline else "n/a"),
                fci(
                    _col(r, "mean", "sla_recall_50"),
                    _col(r, "ci_low", "sla_recall_50"),
                    _col(r, "ci_high", "sla_recall_50"),
                ),
                fnum(_col(r, "mean", "recall_50")),
                fnum(_col(r, "mean", "mrr_10")),
                fnum(_col(r, "mean", "success_10")),
                fnum(_col(r, "mean", "lat_p95"), 1),
                fnum(_col(r, "mean", "lat_p99"), 1),
                _ratio_cell(_col(r, "mean", "p99_p95")),
                *(fnum(_col(r, "mean", m)) for m in extras),
            ]
        )
        attrs.append(
            f'class="lb-row{" base" if sysn == baseline else ""}" data-system="{esc(sysn)}" data-slice="{esc(s)}"'
        )
    tbl = table(
        [
            "#",
            "system",
            "pack",
            "n queries",
            f"{measure_label('ndcg_10')} [95% CI]",
            f"\u0394{measure_label('ndcg_10')} vs baseline [95% CI]",
            f"{measure_label('sla_recall_50')} [95% CI]",
            measure_label("recall_50"),
            measure_label("mrr_10"),
            measure_label("success_10"),
            "p95 ms",
            "p99 ms",
            "p99/p95",
            *(measure_label(m) for m in extras),
        ],
        rows,
        "leaderboard",
        attrs,
    )
    plots = "".join(
        whisker_svg(
            [
                {
                    "system": r["system"],
                    "mean": _col(r, "mean", m),
                    "ci_low": _col(r, "ci_low", m),
                    "ci_high": _col(r, "ci_high", m),
                    "n": _col(r, "n", m),
                }
                for r in recs
            ],
            m,
            lab,
            baseline,
            s,
        )
        for m, lab in WHISKER_METRICS
    )
    return (
        f'<div class="slice" data-slice="{esc(s)}"><h3>slice <code>{esc(s)}</code></h3>{tbl}'
        f'<div class="plots">{plots}</div></div>'
    )


def _ratio_cell(v: Any) -> str:
    if not _finite(v):
        return "n/a"
    cls = "bad" if v > TAIL_RATIO_MAX else ""
    return f'<span class="{cls}">{v:.2f}</span>'


def section_latency(b: _Bundle, baseline: str | None) -> str:
    scores = b.parquet(BUNDLE_FILES["scores"], need=("system", "slice", "metric", "mean", "ci_low", "ci_high", "n"))
    out = ['<section id="latency"><h2>Latency and tail per system</h2>', b.notice(BUNDLE_FILES["scores"])]
    if scores is not None:
        lat = scores.filter(
            (pl.col("slice") == SLICE_ALL)
            & pl.col("metric").is_in(["lat_p50", "lat_p95", "lat_p99", "p99_p95", "within_sla", "cpu_ms"])
        )
        wide = lat.pivot(
            on="metric", index="system", values=["mean", "ci_low", "ci_high"], aggregate_function="first"
        ).sort("system")
        rows, attrs = [], []
        for r in wide.to_dicts():
            rows.append(
                [esc(r["system"])]
                + [
                    fci(_col(r, "mean", m), _col(r, "ci_low", m), _col(r, "ci_high", m), 1)
                    for m in ("lat_p50", "lat_p95", "lat_p99")
                ]
                + [
                    _ratio_cell(_col(r, "mean", "p99_p95")),
                    fci(
                        _col(r, "mean", "within_sla"), _col(r, "ci_low", "within_sla"), _col(r, "ci_high", "within_sla")
                    ),
                    fnum(_col(r, "mean", "cpu_ms"), 1),
                ]
            )
            attrs.append(f'class="lat-row" data-system="{esc(r["system"])}"')
        out.append(
            f'<p class="note">Slice <code>all</code>. Tail gate: p99/p95 &lt;= {TAIL_RATIO_MAX:g} '
            "(values above are marked).</p>"
        )
        out.append(
            table(
                [
                    "system",
                    "p50 ms [95% CI]",
                    "p95 ms [95% CI]",
                    "p99 ms [95% CI]",
                    "p99/p95",
                    "within SLA [95% CI]",
                    "cpu ms/query",
                ],
                rows,
                "latency",
                attrs,
            )
        )
    out.append("</section>")
    return "".join(out)


def section_gates(b: _Bundle, att: dict | None) -> str:
    gates = b.csv(GATES_FILE, need=("gate", "subject", "value", "threshold", "blocking", "passed", "status", "reason"))
    out = ['<section id="gates"><h2>Gates</h2>', b.notice(GATES_FILE)]
    source = GATES_FILE
    if gates is None and att and att.get("gates"):
        gates = pl.DataFrame([{**g, "gate": g.get("name")} for g in att["gates"]], infer_schema_length=None)
        source = "attestation.json (gates)"
    if gates is None:
        out.append("</section>")
        return "".join(out)
    gates = gates.with_columns(pl.col("status").cast(pl.String).fill_null(""))
    counts = gates["status"].value_counts().sort("status").to_dicts()
    blocking_failed = gates.filter(
        pl.col("blocking").cast(pl.String).str.to_lowercase().is_in(["true", "1"]) & (pl.col("status") == "fail")
    )
    summary = ", ".join(f"{c['count']} {esc(c['status'])}" for c in counts)
    out.append(
        f'<p class="note">From <code>{esc(source)}</code>: {gates.height} results ({summary}). '
        + (
            f'<b class="bad">{blocking_failed.height} blocking gate result(s) failed</b>: publication blocked.'
            if blocking_failed.height
            else "No blocking gate failed."
        )
        + " Status <i>insufficient</i> means judged on too little data: reported, not failed.</p>"
    )
    summ = (
        gates.with_columns(pl.col("blocking").cast(pl.String).str.to_lowercase().is_in(["true", "1"]).alias("_b"))
        .group_by("gate", maintain_order=True)
        .agg(
            pl.col("_b").any().alias("blocking"),
            pl.len().alias("results"),
            *[(pl.col("status") == s).sum().alias(s) for s in ("pass", "fail", "insufficient")],
            pl.col("subject").filter(pl.col("status") == "fail").cast(pl.String).alias("failing"),
        )
    )
    srows, sattrs = [], []
    for r in summ.iter_rows(named=True):
        worst = "fail" if r["fail"] else "insufficient" if r["insufficient"] else "pass"
        srows.append(
            [
                esc(r["gate"]),
                badge(worst),
                '<span class="tag">blocking</span>' if r["blocking"] else "warn only",
                str(r["results"]),
                str(r["pass"]),
                str(r["fail"]),
                str(r["insufficient"]),
                esc(", ".join(x or "(table)" for x in r["failing"])),
            ]
        )
        sattrs.append(f'class="gate-summary-row" data-gate="{esc(r["gate"])}" data-status="{worst}"')
    out.append(
        table(
            ["gate", "worst", "blocking", "results", "pass", "fail", "insufficient", "failing subjects"],
            srows,
            "gate-summary",
            sattrs,
        )
    )
    rows, attrs = [], []
    for r in gates.iter_rows(named=True):
        blocking = str(r.get("blocking")).lower() in ("true", "1")
        rows.append(
            [
                esc(r["gate"]),
                esc(r.get("subject") or ""),
                badge(r.get("status")),
                '<span class="tag">blocking</span>' if blocking else "warn only",
                fnum(r.get("value"), 4),
                fnum(r.get("threshold"), 4),
                esc(r.get("reason") or ""),
                esc(r.get("owner") or ""),
            ]
        )
        attrs.append(
            f'class="gate-row" data-gate="{esc(r["gate"])}" data-subject="{esc(r.get("subject") or "")}" '
            f'data-status="{esc(r.get("status"))}" data-blocking="{str(blocking).lower()}"'
        )
    out.append(
        f"<h3>Every gate result ({gates.height})</h3>"
        + table(
            ["gate", "subject", "status", "blocking", "value", "threshold", "reason", "owner"], rows, "gates", attrs
        )
    )
    out.append("</section>")
    return "".join(out)


def section_heroes(b: _Bundle) -> str:
    heroes = b.csv(HEROES_FILE, need=("pack", "hero", "reason"))
    rules = b.parquet(PROMOTION_FILE, need=("pack", "system", "rule", "passed"))
    out = ['<section id="heroes"><h2>Hero decisions and promotion rules</h2>', b.notice(HEROES_FILE, PROMOTION_FILE)]
    if heroes is not None:
        rows, attrs = [], []
        for r in heroes.iter_rows(named=True):
            hero = r.get("hero")
            rows.append(
                [
                    esc(r["pack"]),
                    f'<span class="sys">{esc(hero)}</span>' if hero else badge("none"),
                    esc(r.get("cfg_hash") or ""),
                    fnum(r.get("ndcg_10"), 4),
                    esc(r.get("calibration_version") or ""),
                    esc(r.get("reason") or ""),
                ]
            )
            attrs.append(f'class="hero-row" data-pack="{esc(r["pack"])}" data-hero="{esc(hero or "")}"')
        out.append(
            '<p class="note">A pack\'s hero is its best variant by nDCG@10 that passes every promotion rule '
            "vs the baseline; its cfg_hash and calibration version are locked into the attestation.</p>"
        )
        out.append(
            table(["pack", "hero", "cfg_hash", "nDCG@10", "calibration version", "reason"], rows, "heroes", attrs)
        )
    if rules is not None:
        for pack in rules["pack"].unique(maintain_order=True).to_list():
            sub = rules.filter(pl.col("pack") == pack)
            n_sys = sub["system"].n_unique()
            n_ok = sub.group_by("system").agg(pl.col("passed").all()).filter(pl.col("passed")).height
            cols = [
                c for c in ("system", "cfg_hash", "rule", "value", "threshold", "passed", "detail") if c in sub.columns
            ]
            shown = sub.select(cols).with_columns(
                pl.col("passed").cast(pl.String).replace({"true": "pass", "false": "fail"}).alias("passed")
            )
            out.append(
                f'<details class="rules" data-pack="{esc(pack)}"><summary>{esc(pack)}: {sub.height} rule results, '
                f"{n_ok}/{n_sys} variant(s) pass every rule</summary>"
                + frame_table(shown, "rules", status_cols=("passed",))
                + "</details>"
            )
    out.append("</section>")
    return "".join(out)


def section_canary(b: _Bundle) -> str:
    out = ['<section id="canary"><h2>Canary timeline</h2>']
    present = [rel for rel in CANARY_FILES if b.path(rel).is_file()]
    if not present:
        out.append("".join(absent(rel, "the canary has not run for this bundle") for rel in CANARY_FILES))
        out.append("</section>")
        return "".join(out)
    steps = b.csv(CANARY_FILES[0], need=("phase", "step", "pct", "decision"), optional=True)
    windows = b.csv(CANARY_FILES[1], need=("phase", "step", "pct", "window", "status"), optional=True)
    decisions = b.csv(CANARY_FILES[2], need=("phase", "step", "action", "from_pct", "to_pct"), optional=True)
    for rel in CANARY_FILES:
        if not b.path(rel).is_file():
            out.append(f'<p class="missing" data-missing="{esc(rel)}">missing: {esc(rel)}</p>')
        elif rel in b.unreadable:
            out.append(b.notice(rel))
    out.append(
        '<p class="note">SPEC 9: A/A first, then the ladder 5% -&gt; 25% -&gt; 50% -&gt; 100% by repo bucket. '
        "Each cell is one judged window (green / red / insufficient); ^ advance, x revert (two consecutive "
        "red windows; the owner is paged), * complete.</p>"
    )
    frames = [f for f in (steps, windows, decisions) if f is not None]
    tests = []
    for f in frames:
        if "test" in f.columns:
            tests += [t for t in f["test"].unique(maintain_order=True).to_list() if t not in tests]
    if not tests:
        tests = [None]

    def part(df: pl.DataFrame | None, t: str | None) -> pl.DataFrame | None:
        if df is None:
            return None
        return df.filter(pl.col("test") == t) if t is not None and "test" in df.columns else df

    for t in tests:
        st, wi, de = part(steps, t), part(windows, t), part(decisions, t)
        label = t or "test arm"
        final = ""
        if de is not None and de.height:
            last = de.tail(1).row(0, named=True)
            to = last.get("to_pct")
            final = f" - last decision: {badge(last.get('action'))}" + (f" at {to}%" if _finite(to) else "")
        out.append(
            f'<div class="canary" data-test="{esc(label)}"><h3><span class="sys">{esc(label)}</span>{final}</h3>'
        )
        if wi is not None:
            out.append(canary_timeline_svg(wi, de, label))
        if st is not None:
            out.append(frame_table(st.drop("test", strict=False), "canary-steps", status_cols=("decision",)))
        if de is not None:
            out.append(
                f"<details><summary>decisions ({de.height})</summary>"
                + frame_table(de.drop("test", strict=False), "canary-decisions", status_cols=("action",))
                + "</details>"
            )
        if wi is not None:
            cols = [
                c
                for c in (
                    "phase",
                    "step",
                    "pct",
                    "window",
                    "n_test",
                    "calib_p99_ms",
                    "ece",
                    "ece_status",
                    "conf_shift",
                    "sla_recall_delta",
                    "status",
                    "reason",
                )
                if c in wi.columns
            ]
            out.append(
                f"<details><summary>windows ({wi.height})</summary>"
                + frame_table(wi.select(cols), "canary-windows", status_cols=("status",))
                + "</details>"
            )
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def section_pool(b: _Bundle) -> str:
    counts = b.csv(BUNDLE_FILES["pool_counts"], need=("system", "contributed", "unique_contributed", "judged_share"))
    out = ['<section id="pool"><h2>Pool membership</h2>', b.notice(BUNDLE_FILES["pool_counts"])]
    if counts is not None:
        out.append(
            '<p class="note">Members each system contributed to the judged pool, those only it contributed, and '
            "the share of its top 10 that is judged (pool gate: &gt;= 0.9).</p>"
        )
        out.append(frame_table(counts.sort("system"), "pool-counts"))
    if b.path(POOL_AUDIT_FILE).is_file():
        audit = b.csv(POOL_AUDIT_FILE, optional=True)
        out.append("<h3>Pool audit diff vs the previous week</h3>" + b.notice(POOL_AUDIT_FILE))
        if audit is not None:
            out.append(frame_table(audit, "pool-audit"))
    else:
        out.append("<h3>Pool audit diff</h3>" + absent(POOL_AUDIT_FILE, "the weekly pool audit has not been added"))
    out.append("</section>")
    return "".join(out)


def section_calibration(b: _Bundle) -> str:
    cal = b.parquet(CALIBRATION_FILE, need=("system", "status", "ece"))
    par = b.parquet(PARITY_FILE)
    out = ['<section id="calibration"><h2>Calibration</h2>', b.notice(CALIBRATION_FILE, PARITY_FILE)]
    if cal is not None:
        summ = (
            cal.group_by("system")
            .agg(
                pl.len().alias("cells"),
                (pl.col("status") == "pass").sum().alias("pass"),
                (pl.col("status") == "fail").sum().alias("fail"),
                (pl.col("status") == "insufficient").sum().alias("insufficient"),
                pl.col("ece").filter(pl.col("status") != "insufficient").max().alias("max_ece_judged"),
                *(
                    [pl.col("calibrator_version").first().alias("calibrator_version")]
                    if "calibrator_version" in cal.columns
                    else []
                ),
            )
            .sort("system")
        )
        out.append(
            '<p class="note">ECE gate: &lt;= 0.02 per cell (intent x language) with enough held-out labels; '
            "cells whose noise floor exceeds the gate are <i>insufficient</i>.</p>"
        )
        out.append(frame_table(summ, "calibration"))
        cols = [
            c
            for c in (
                "system",
                "intent",
                "language",
                "n_eval",
                "n_pos_eval",
                "ece",
                "adaptive_ece",
                "debiased_ece",
                "brier",
                "noise_floor",
                "labels_needed",
                "status",
                "reason",
            )
            if c in cal.columns
        ]
        out.append(
            f"<details><summary>every cell ({cal.height})</summary>"
            + frame_table(cal.select(cols), "calibration-cells")
            + "</details>"
        )
    if par is not None:
        out.append("<h3>Calibrator export parity</h3>" + frame_table(par, "parity", status_cols=("passed",)))
    pngs = sorted(b.path("calibration").glob("reliability_*.png")) if b.path("calibration").is_dir() else []
    if pngs:
        budget = MAX_INLINE_PNG_BYTES
        figs, cells = [], []
        for p in pngs:
            rel = p.relative_to(b.root).as_posix()
            size = p.stat().st_size
            if size > budget:
                figs.append(f'<p class="absent">not inlined (size budget): {esc(rel)}</p>')
                continue
            budget -= size
            uri = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
            fig = (
                f'<figure class="reliability" data-file="{esc(rel)}"><img alt="reliability diagram {esc(p.stem)}" '
                f'src="{uri}" loading="lazy"><figcaption>{esc(rel)}</figcaption></figure>'
            )
            (cells if p.stem.endswith("__cells") else figs).append(fig)
        out.append(f'<h3>Reliability diagrams</h3><div class="figs">{"".join(figs)}</div>')
        if cells:
            out.append(
                f"<details><summary>per-cell reliability diagrams ({len(cells)})</summary>"
                f'<div class="figs">{"".join(cells)}</div></details>'
            )
    else:
        out.append(
            '<p class="missing" data-missing="calibration/reliability_*.png">missing: calibration/reliability_*.png</p>'
        )
    out.append("</section>")
    return "".join(out)


def section_lvm(lvm_dir: Path | None) -> str:
    out = ['<section id="lvm"><h2>LVM evaluation</h2>']
    p = lvm_dir / LVM_EVAL_FILE if lvm_dir else None
    if p is None or not p.is_file():
        shown = "lvm/" + LVM_EVAL_FILE
        out.append(
            f'<p class="absent" data-absent="{esc(shown)}">not available: {esc(shown)} '
            "(no LVM evaluation beside this bundle; run <code>lens-eval lvm run</code>)</p></section>"
        )
        return "".join(out)
    try:
        ev = pl.read_parquet(p)
        lack = [
            c
            for c in ("model", "lane", "k", "hit", "ci_low", "ci_high", "n_queries", "n_candidates", "p95_ms")
            if c not in ev.columns
        ]
        if lack:
            raise ValueError(f"lacks column(s) {', '.join(lack)}")
    except Exception as e:  # noqa: BLE001
        out.append(
            f'<p class="missing" data-missing="lvm/{LVM_EVAL_FILE}">unreadable: lvm/{LVM_EVAL_FILE} '
            f"({esc(type(e).__name__)}: {esc(e)})</p></section>"
        )
        return "".join(out)
    out.append(
        f'<p class="note">From <code>lvm/{LVM_EVAL_FILE}</code> beside the bundle (not part of the attested '
        "bundle). Hit@k of the true next concept vector among the whole held-out concept bank, with 95% "
        "bootstrap CI.</p>"
    )
    champ = None
    cp = lvm_dir / LVM_CHAMPION_FILE
    if cp.is_file():
        with contextlib.suppress(Exception):
            champ = json.loads(cp.read_text())
    if isinstance(champ, dict):
        cur = champ.get("current") or champ.get("champion")
        name = cur.get("name") if isinstance(cur, dict) else cur
        out.append(f'<p>Champion: <span class="sys">{esc(name)}</span></p>')
    overall = ev.filter(pl.col("lane") == SLICE_ALL)
    ks = sorted(overall["k"].unique().to_list())
    rows, attrs = [], []
    for model in overall["model"].unique(maintain_order=True).to_list():
        sub = overall.filter(pl.col("model") == model)
        by_k = {r["k"]: r for r in sub.iter_rows(named=True)}
        first = sub.row(0, named=True)
        rows.append(
            [f'<span class="sys">{esc(model)}</span>']
            + [fci(by_k[k]["hit"], by_k[k]["ci_low"], by_k[k]["ci_high"]) if k in by_k else "n/a" for k in ks]
            + [fnum(first["n_queries"]), fnum(first["n_candidates"]), fnum(first["p95_ms"], 3)]
        )
        attrs.append(f'class="lvm-row" data-model="{esc(model)}"')
    out.append(
        table(["model"] + [f"Hit@{k} [95% CI]" for k in ks] + ["queries", "candidates", "p95 ms"], rows, "lvm", attrs)
    )
    lanes = ev.filter(pl.col("lane") != SLICE_ALL)
    if lanes.height:
        out.append(
            f"<details><summary>per lane ({lanes['lane'].n_unique()} lanes)</summary>"
            + frame_table(lanes.sort(["model", "lane", "k"]), "lvm-lanes")
            + "</details>"
        )
    out.append("</section>")
    return "".join(out)


def section_hardest(b: _Bundle, baseline: str | None) -> str:
    pq = b.parquet(BUNDLE_FILES["per_query"], need=("system", "qid", "ndcg_10"))
    q = b.parquet(QUERIES_FILE, need=("qid", "text"))
    out = ['<section id="queries"><h2>Hardest queries</h2>', b.notice(BUNDLE_FILES["per_query"], QUERIES_FILE)]
    if pq is not None:
        agg = pq.group_by("qid").agg(
            pl.col("ndcg_10").mean().alias("mean_ndcg_10"),
            pl.col("ndcg_10").filter(pl.col("system") == baseline).first().alias("baseline_ndcg_10"),
        )
        hard = agg.sort(["mean_ndcg_10", "qid"], nulls_last=True).head(HARDEST_N)
        if q is not None:
            keep = [c for c in ("qid", "text", "suite", "intent", "language") if c in q.columns]
            hard = hard.join(q.select(keep).unique("qid", keep="first"), on="qid", how="left")
        rows, attrs = [], []
        for r in hard.iter_rows(named=True):
            rows.append(
                [
                    f"<code>{esc(r['qid'])}</code>",
                    f'<span class="qtext">{esc(r.get("text"))}</span>',
                    esc(r.get("suite")),
                    esc(r.get("intent")),
                    esc(r.get("language")),
                    fnum(r["mean_ndcg_10"]),
                    fnum(r["baseline_ndcg_10"]),
                ]
            )
            attrs.append(f'class="query-row" data-qid="{esc(r["qid"])}"')
        out.append(f'<p class="note">The {HARDEST_N} queries with the lowest nDCG@10 averaged over every system.</p>')
        out.append(
            table(
                ["qid", "query", "suite", "intent", "language", "mean nDCG@10", f"{baseline or 'baseline'} nDCG@10"],
                rows,
                "hardest",
                attrs,
            )
        )
    out.append("</section>")
    return "".join(out)


def section_attestation(b: _Bundle, att: dict | None) -> str:
    out = ['<section id="attestation"><h2>Attestation</h2>', b.notice(BUNDLE_FILES["attestation"])]
    if att:
        arts = att.get("artifacts") or {}
        out.append(
            f"<details><summary>{len(arts)} attested artifacts (sha256)</summary>"
            + table(
                ["artifact", "sha256"],
                [[esc(k), f"<code>{esc(v)}</code>"] for k, v in sorted(arts.items())],
                "artifacts",
            )
            + "</details>"
        )
        cfg = att.get("cfg_hashes") or {}
        if cfg:
            out.append(
                f"<details><summary>cfg hashes ({len(cfg)} systems)</summary>"
                + table(
                    ["system", "cfg_hash"], [[esc(k), f"<code>{esc(v)}</code>"] for k, v in sorted(cfg.items())], "cfg"
                )
                + "</details>"
            )
        vers = att.get("versions") or {}
        if vers:
            out.append(
                "<details><summary>versions</summary>"
                + table(["package", "version"], [[esc(k), esc(v)] for k, v in sorted(vers.items())], "versions")
                + "</details>"
            )
    out.append("</section>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# Page
# ----------------------------------------------------------------------------------------------
CSS = """
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--info:#57606a;--fg:#1f2328;--mute:#57606a;--line:#d0d7de;--bg:#fff}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;padding:12px 16px 48px;max-width:1280px}
h1{font-size:20px;margin:8px 0 4px;word-break:break-all}h2{font-size:17px;border-bottom:1px solid var(--line);
padding-bottom:4px;margin-top:28px}h3{font-size:15px;margin:18px 0 6px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
nav{display:flex;flex-wrap:wrap;gap:4px 12px;margin:8px 0;font-size:13px}nav a{color:#0969da}
.tw{overflow-x:auto;max-width:100%;margin:6px 0}
table{border-collapse:collapse;font-size:12.5px;min-width:50%}
th,td{border:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}
tr.base td{background:#fff8c5}
.ci{color:var(--mute);font-size:11.5px;white-space:nowrap}
.sys{font-weight:600;word-break:break-all}.tag{font-size:11px;border:1px solid var(--line);border-radius:8px;padding:0 5px}
.badge{display:inline-block;font-size:11.5px;font-weight:600;border-radius:8px;padding:0 7px;color:#fff;background:var(--info)}
.badge.ok{background:var(--ok)}.badge.bad{background:var(--bad)}.badge.warn{background:var(--warn)}
.pos{color:var(--ok);font-weight:600}.neg,.bad{color:var(--bad);font-weight:600}
.banner{border-radius:6px;padding:8px 12px;margin:8px 0;font-weight:600}
.banner.ok{background:#dafbe1;border:1px solid var(--ok)}.banner.bad{background:#ffebe9;border:1px solid var(--bad)}
.banner.warn{background:#fff8c5;border:1px solid var(--warn)}
.missing{background:#ffebe9;border-left:4px solid var(--bad);padding:4px 8px;font-family:ui-monospace,monospace;font-size:12.5px}
.absent{background:#f6f8fa;border-left:4px solid var(--info);padding:4px 8px;font-size:12.5px}
.note{color:var(--mute);font-size:13px}
dl.meta{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 12px;margin:6px 0;font-size:13px}
dl.meta dt{color:var(--mute)}dl.meta dd{margin:0;min-width:0;word-break:break-all}dl.meta .ci{white-space:normal}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:8px}
svg{max-width:100%;height:auto;font-family:system-ui,sans-serif}
svg .ttl{font-size:12px;font-weight:600;fill:var(--fg)}svg .tick,svg .name{font-size:11px;fill:var(--mute)}
svg .whisker.base .name{fill:var(--fg);font-weight:700}
svg .grid{stroke:#eaeef2;stroke-width:1}svg .baseline{stroke:var(--warn);stroke-dasharray:4 3;stroke-width:1.5}
svg .ci,svg .cap{stroke:#0969da;stroke-width:2}svg .pt{fill:#0969da}svg .whisker.base .pt{fill:var(--warn)}
svg .cw{fill:#8c959f}svg .cw.green{fill:var(--ok)}svg .cw.red{fill:var(--bad)}svg .cw.insufficient{fill:#d4a72c}
svg .act{font-size:13px;font-weight:700;fill:var(--fg)}svg .act.revert{fill:var(--bad)}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:8px}
figure{margin:0;border:1px solid var(--line);padding:4px}figure img{width:100%;height:auto}
figcaption{font-size:11px;color:var(--mute);word-break:break-all}
.qtext{white-space:pre-wrap;word-break:break-word}
@media (max-width:640px){body{padding:8px}table{font-size:11.5px}dl.meta{grid-template-columns:minmax(0,1fr)}}
"""

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

HOW_TO_READ = (
    '<section id="how"><h2>How to read this page</h2><ul class="note">'
    "<li>Each leaderboard row is one system on one slice of the query suites (<code>all</code>, or "
    "<code>intent=</code>, <code>language=</code>, <code>suite=</code>). Quality metrics use span-only credit "
    "(SPEC 4).</li>"
    "<li>In the plots the point is the mean over queries and the whisker is the <b>95% paired bootstrap "
    "confidence interval over queries</b> (queries resampled with replacement, the same resample for every "
    "system). The dashed line marks the baseline's mean. Overlapping whiskers do not settle a comparison: the "
    "paired delta column (and its CI and Holm-adjusted p) does.</li>"
    "<li>Gates are the SPEC 7 checks. A failed <i>blocking</i> gate stops publication: the last green bundle "
    "stays published.</li>"
    '<li>Every number comes from the bundle\'s files; <a href="{att}">attestation.json</a> holds the sha256 of '
    "each of them. <code>lens-eval verify BUNDLE</code> re-hashes and re-scores the bundle.</li></ul></section>"
)


def _publication_state(bundle: Path, att: dict | None, fp: str) -> tuple[str, str]:
    """(css class, text) of the bundle's publication state as of now."""
    data_dir = bundle.parent.parent if bundle.parent.name == "bundles" else None
    pointer = None
    if data_dir is not None and (data_dir / PUBLISHED_POINTER).is_file():
        with contextlib.suppress(Exception):
            pointer = json.loads((data_dir / PUBLISHED_POINTER).read_text())
    published_fp = pointer.get("fingerprint") if isinstance(pointer, dict) else None
    failed = [
        f"{g.get('name')}" + (f"[{g.get('subject')}]" if g.get("subject") else "")
        for g in (att or {}).get("gates", [])
        if g.get("blocking") and not g.get("passed")
    ]
    if published_fp == fp:
        return "ok", "PUBLISHED: this is the bundle published.json points at."
    if att is not None and (att.get("all_blocking_green") is False or failed):
        return "bad", (
            "NOT PUBLISHED: blocking gate(s) failed: "
            + ", ".join(failed[:12])
            + (f" (+{len(failed) - 12} more)" if len(failed) > 12 else "")
            + (f". Published stays {published_fp}." if published_fp else ".")
        )
    if published_fp:
        return "warn", f"Not the published bundle (every blocking gate green; published is {published_fp})."
    return "warn", "Publication state unknown (no published.json beside this bundle)."


def render_site(
    bundle_dir: str | os.PathLike,
    lvm_dir: str | os.PathLike | None = None,
    attestation_href: str = ATTESTATION_HREF,
    now: float | None = None,
) -> str:
    """The page as a string (ASCII). Raises SiteError when `bundle_dir` is not a bundle at all."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise SiteError(f"{bundle}: no such bundle directory")
    known = [rel for rel in EXPECTED if (bundle / rel).is_file()]
    if not known:
        raise SiteError(f"{bundle}: not a bundle (none of {', '.join(EXPECTED[:4])}, ... found)")
    b = _Bundle(bundle)
    att = b.json(BUNDLE_FILES["attestation"])
    hero = b.csv(BUNDLE_FILES["hero_table"], need=("system",))
    packs, baseline = _systems_info(att, hero)
    if baseline is None and b.path(BUNDLE_FILES["comparisons"]).is_file():
        comps = b.parquet(BUNDLE_FILES["comparisons"])
        if comps is not None and "control" in comps.columns and comps.height:
            baseline = comps["control"].mode().sort().item(0)
    if lvm_dir is None and bundle.parent.name == "bundles":
        lvm_dir = bundle.parent.parent / "lvm"
    fp = (att or {}).get("fingerprint") or bundle.name
    state_cls, state = _publication_state(bundle, att, fp)

    body = [
        section_leaderboard(b, packs, baseline),
        section_latency(b, baseline),
        section_gates(b, att),
        section_heroes(b),
        section_canary(b),
        section_pool(b),
        section_calibration(b),
        section_lvm(Path(lvm_dir) if lvm_dir else None),
        section_hardest(b, baseline),
        section_attestation(b, att),
    ]
    for rel in EXPECTED:  # every expected artifact is accounted for, even one no section loaded
        if not b.path(rel).is_file() and rel not in b.missing:
            b.missing.append(rel)
    att_sha = (
        sha256_file(b.path(BUNDLE_FILES["attestation"])) if b.path(BUNDLE_FILES["attestation"]).is_file() else None
    )
    ds = (att or {}).get("data_source")
    meta = [
        ("fingerprint", f'<code id="fingerprint">{esc(fp)}</code>'),
        ("created", esc((att or {}).get("created_utc", "n/a"))),
        ("partition", esc((att or {}).get("partition", "n/a"))),
        ("data source", esc(json.dumps(ds, sort_keys=True) if isinstance(ds, dict) else ds or "n/a")),
        ("code version", f"<code>{esc((att or {}).get('code_version', 'n/a'))}</code>"),
        ("content sha256", f"<code>{esc((att or {}).get('content_sha256', 'n/a'))}</code>"),
        (
            "attestation",
            f'<a id="attestation-link" href="{esc(attestation_href)}">attestation.json</a>'
            + (
                f' <span class="ci">sha256 <code>{esc(att_sha)}</code></span>'
                if att_sha
                else ' <span class="bad">missing</span>'
            ),
        ),
        ("page built", esc(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now if now is not None else time.time())))),
        ("bundle", f"<code>{esc(bundle.resolve())}</code>"),
    ]
    problems = ""
    if b.missing or b.unreadable:
        items = [f"<li>missing: <code>{esc(r)}</code></li>" for r in b.missing]
        items += [f"<li>unreadable: <code>{esc(r)}</code> ({esc(e)})</li>" for r, e in b.unreadable.items()]
        problems = (
            f'<div class="banner warn" id="missing-summary">This bundle is incomplete: '
            f"{len(b.missing)} missing, {len(b.unreadable)} unreadable artifact(s); the sections "
            f"below say what they could not show.<ul>{''.join(items)}</ul></div>"
        )
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("leaderboard", "Leaderboard"),
            ("latency", "Latency"),
            ("gates", "Gates"),
            ("heroes", "Heroes"),
            ("canary", "Canary"),
            ("pool", "Pool"),
            ("calibration", "Calibration"),
            ("lvm", "LVM"),
            ("queries", "Hardest queries"),
            ("attestation", "Attestation"),
            ("how", "How to read"),
        )
    )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>Lens release {esc(fp)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>Lens release <span class="fp">{esc(fp)}</span></h1>'
        f'<div class="banner {state_cls}" id="publication-state" data-state="{state_cls}">{esc(state)}</div>'
        f"{problems}"
        '<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>"
        f"<nav>{nav}</nav></header><main>"
        + "".join(body)
        + HOW_TO_READ.replace("{att}", esc(attestation_href))
        + '</main><footer class="note"><p>Generated by lens_core.publish.site from the bundle\'s own files; self-contained '
        "(no scripts, no network).</p></footer></body></html>\n"
    )
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")


def build_site(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    lvm_dir: str | os.PathLike | None = None,
    attestation_href: str | None = None,
) -> Path:
    """Write `<out_dir>/index.html` (default `<bundle>/site/`) atomically; return its path.

    The attestation link is relative: `../attestation.json` for the default location, else a
    path from `out_dir` to the bundle's attestation."""
    bundle = Path(bundle_dir)
    out = Path(out_dir) if out_dir is not None else bundle / SITE_DIR
    if attestation_href is None:
        if out_dir is None:
            attestation_href = ATTESTATION_HREF
        else:
            attestation_href = Path(
                os.path.relpath(bundle.resolve() / BUNDLE_FILES["attestation"], out.resolve())
            ).as_posix()
    page = render_site(bundle, lvm_dir=lvm_dir, attestation_href=attestation_href)
    target = out / INDEX
    atomic_write_text(target, page)
    return target


def render_served_site(bundle: Path, stage: Path, lvm_dir: str | os.PathLike | None = None) -> None:
    """The served site of `bundle` in `stage`: its index.html (with a copy of the bundle's
    attestation.json beside it, linked as `attestation.json`); also (re)builds the bundle's own
    `site/`."""
    build_site(bundle, lvm_dir=lvm_dir)
    att = bundle / BUNDLE_FILES["attestation"]
    if att.is_file():
        shutil.copyfile(att, stage / BUNDLE_FILES["attestation"])
    build_site(bundle, out_dir=stage, lvm_dir=lvm_dir, attestation_href=BUNDLE_FILES["attestation"])


def publish_site(data_dir: str | os.PathLike, lvm_dir: str | os.PathLike | None = None) -> Path:
    """Serve the published bundle's site from `<data_dir>/site/`: built in a fresh directory
    beside it (`render_served_site`, with the pointer), then swapped in with one atomic rename
    of the `site` symlink, under the publish lock (`bundle.publish_pointer`: `published.json`
    is `site/published.json`, so they move together). Returns the path of the served index.html."""
    data_dir = Path(data_dir).resolve()
    p = data_dir / PUBLISHED_POINTER
    with publish_lock(data_dir):
        if not p.is_file():
            raise SiteError(f"{p}: no published bundle (nothing to serve)")
        try:
            pointer = json.loads(p.read_text())
            bundle = data_dir / pointer["bundle"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SiteError(f"{p}: not a valid published pointer ({e})") from None
        if not bundle.is_dir():
            raise SiteError(f"{p}: points at {bundle}, which does not exist")
        pointer.setdefault("fingerprint", bundle.name)
        publish_pointer(data_dir, pointer, bundle, functools.partial(render_served_site, lvm_dir=lvm_dir))
    return data_dir / SITE_DIR / INDEX
