"""Reliability diagrams (SPEC §6): PNG, matplotlib Agg, written atomically.

Top panel: the diagonal (perfect calibration), the per-bin accuracy (share of relevant hits)
over equal-width bins as steps, the points (mean confidence, accuracy) per bin, and the ECE
in the legend. Bottom panel: hit counts per bin. The figure is built on a
`matplotlib.figure.Figure` with an Agg canvas (no pyplot global state, safe in threads and
long-running processes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lens_core.common.hashing import atomic_path


def _bin_table(conf: np.ndarray, label: np.ndarray, bins: int):
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    n_b = np.bincount(ids, minlength=bins)
    s_c = np.bincount(ids, weights=conf, minlength=bins)
    s_y = np.bincount(ids, weights=label, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_c = s_c / n_b
        acc = s_y / n_b
    ece = float(np.abs(s_y - s_c).sum() / max(conf.size, 1))
    return edges, n_b, mean_c, acc, ece


def reliability_diagram(conf, label, title: str, path: str | os.PathLike, bins: int = 10, dpi: int = 90) -> Path:
    """Write a reliability diagram PNG to `path` (atomically) and return the path.

    `conf` in [0, 1], `label` 0/1, same length. An empty input draws an empty diagram that
    says "no labelled hits" rather than failing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = np.asarray(conf, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=np.float64).ravel()
    if c.shape != y.shape:
        raise ValueError(f"reliability_diagram {title!r}: {c.size} confidences but {y.size} labels")
    if c.size and (not np.isfinite(c).all() or (c < 0).any() or (c > 1).any()):
        raise ValueError(f"reliability_diagram {title!r}: confidences must be finite and in [0, 1]")
    if c.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"reliability_diagram {title!r}: labels must be 0 or 1")
    if bins < 1:
        raise ValueError("reliability_diagram: bins must be >= 1")
    edges, n_b, mean_c, acc, ece = _bin_table(c, y, bins)

    fig = Figure(figsize=(5.0, 5.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax, axh = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    fig.subplots_adjust(left=0.14, right=0.97, top=0.93, bottom=0.09, hspace=0.08)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    has = n_b > 0
    if has.any():
        # One patch per series (stairs), not one per bin: drawing cost stays flat.
        ax.stairs(
            np.where(has, acc, 0.0),
            edges,
            fill=True,
            color="#4C72B0",
            alpha=0.6,
            label=f"share relevant per bin (ECE {ece:.4f})",
        )
        ax.plot(
            mean_c[has],
            acc[has],
            marker="o",
            color="#C44E52",
            linewidth=1,
            markersize=3,
            label="(mean confidence, share relevant)",
        )
    else:
        ax.text(0.5, 0.5, "no labelled hits", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share relevant")
    ax.set_title(f"{title}  (n={c.size})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    axh.stairs(n_b, edges, fill=True, color="0.55")
    axh.set_xlabel("confidence")
    axh.set_ylabel("hits")

    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return target


def reliability_grid(
    cells: list[tuple[str, np.ndarray, np.ndarray]],
    title: str,
    path: str | os.PathLike,
    bins: int = 10,
    dpi: int = 80,
    cols: int = 4,
) -> Path:
    """Small multiples: one reliability panel per cell (title, conf, label) in one PNG.

    One figure per system instead of one file per cell keeps the per-cell diagrams cheap to
    draw and easy to scan side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(cells))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.5 * rows + 0.4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, conf, label) in zip(axes, cells):
        c = np.asarray(conf, dtype=np.float64)
        y = np.asarray(label, dtype=np.float64)
        edges, n_b, mean_c, acc, ece = _bin_table(c, y, bins)
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=0.8)
        has = n_b > 0
        if has.any():
            ax.stairs(np.where(has, acc, 0.0), edges, fill=True, color="#4C72B0", alpha=0.6)
            ax.plot(mean_c[has], acc[has], marker="o", color="#C44E52", linewidth=0.8, markersize=2)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}\nn={c.size} ECE={ece:.3f}", fontsize=7)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=6)
    for ax in axes[len(cells) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    # Fixed margins: tight_layout measures every text box and costs more than the drawing.
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.06, top=1 - 0.75 / (2.5 * rows + 0.4), wspace=0.3, hspace=0.75)
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return target
