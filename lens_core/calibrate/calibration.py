"""Confidence calibration per (system, intent, language) cell (SPEC §6).

A hit's confidence is the calibrated P(relevant | raw engine score).

Data
----
Labelled hits: a polars DataFrame with columns `system, qid, intent, language, score, label`
(`label` 0/1: the hit is relevant). `qid_split` splits by *query* (a salted blake2b hash of
the qid, stable across runs and machines, ~50/50): the fit half fits, the held-out half is
evaluated, so no query contributes to both.

Fitting (`fit_cells`)
---------------------
Isotonic regression of label on score with clipping outside the fitted range: the same fit
as scikit-learn's `IsotonicRegression(increasing=True, out_of_bounds="clip")` (duplicate scores
merged, PAV via `scipy.optimize.isotonic_regression`, thresholds trimmed as sklearn trims them;
tests hold it to sklearn within 1e-9; sklearn itself is only imported for the parity suite).
A cell stands on its own when its fit half has at least `min_labels` labels (default 200) and
at least `min_per_class` positives and negatives (default 5); otherwise it backs off to the
pooled (system, intent) data under the same rule, and otherwise to the pooled (system) data
(used whatever its size; a system whose labels are all of one class gets a constant
calibrator and its note says so). Every system also gets a system-level calibrator and every
eligible (system, intent) an intent-level one, so a cell first seen after fitting backs off
too. Each calibrator is exported as breakpoints `(x, y)` with linear interpolation between
them and clipping outside (`Calibrator`), which is exactly sklearn's `predict` (linear
interpolation between the same thresholds); `parity` / `parity_cells` check it.

Metrics (all on the held-out half)
----------------------------------
* `ece`: 10 equal-width bins on [0, 1] (bin i is [i/10, (i+1)/10), the last closed, as
  numpy/netcal histograms), Σ_b (n_b/N)·|mean(label)_b − mean(conf)_b| — netcal's binary ECE.
* `adaptive_ece`: the same over equal-mass bins (sorted by confidence, `bins` groups of
  ⌊N/bins⌋ or ⌈N/bins⌉ hits; ties may straddle bins).
* `debiased_ece`: ECE minus its expectation under perfect calibration, clipped at 0. The
  expectation is estimated by simulation: labels in bin b are redrawn as
  Binomial(n_b, mean conf_b) (the Poisson-binomial of per-hit Bernoulli(conf) has variance
  Σ c(1−c) <= n_b c̄(1−c̄), so this is at most slightly conservative).
* `ece_noise_floor`: the `q` (0.95) quantile of that same null distribution: the ECE a
  perfectly calibrated cell shows by chance with this many labels. With `n` it answers the
  question for a different label count (bin occupancies redrawn Multinomial(n, p_b)).
* Query-resampled null (issue 17; what `cell_report` uses): a query's hits are correlated,
  so `query_null_ece_distribution` resamples held-out *queries* with replacement and takes
  the ECE of the centred per-bin gaps (see there). With independent hits it agrees with the
  binomial null above; with clustered labels it is wider, as it should be. The binomial
  functions (`null_ece_distribution`, `ece_noise_floor`, `debiased_ece`) remain for callers
  that have no query ids, and `labels_needed`'s planning numbers below use them.
* `brier`: mean (conf − label)².
* `merged_bin_share`: on the fit data, the scores are cut into `bins` (20) equal-mass bins
  (ties kept together); weighted PAV over the bins' positive rates pools every bin whose rate
  breaks monotonicity with a neighbour; the share is (#bins whose PAV value differs from
  their raw rate) / (#bins). 0 = the raw score orders relevance perfectly at this
  resolution; near 1 = the score barely orders relevance.

Status (`cell_report`): `insufficient` when the cell has no held-out labels or when its noise
floor (query-resampled, at its held-out size) exceeds the gate (0.02), otherwise
`pass` if ECE <= gate else `fail`.

How many labels a cell needs
----------------------------
The noise floor falls as ~1/√n. Simulated with `ece_noise_floor(conf, n)` (q = 0.95, 10 bins)
for a typical hit-confidence distribution of a code-search cell (most hits unlikely to be
relevant: conf ~ Beta(0.6, 2.4), mean 0.2), the floor drops under 0.02 at about **3,400
held-out labels** (≈ 6,800 labelled hits in the cell, since half are held out); 500 held-out
labels give a floor of ≈ 0.05, 1,000 ≈ 0.036, 2,000 ≈ 0.026, 4,000 ≈ 0.018. A confidence
distribution concentrated near 0 needs fewer (Beta(0.3, 3), mean 0.09: ≈ 1,650), a spread
one needs more (Uniform(0, 1): ≈ 5,200; Beta(2, 2): ≈ 5,800). The binomial-per-bin null was
checked against exact per-hit Bernoulli simulation (3,000 hits: q95 0.0212 vs 0.0208).
`labels_needed` in the report extrapolates each cell's own floor as n_eval·(floor/gate)².

Weekly refit with slope clamp (`refit_with_clamp`)
--------------------------------------------------
Given the current calibrator `prev` (raw score → current confidence c) and newly labelled
hits: (1) fit `new` (isotonic) on the new data; (2) c = prev(score), v = new(score) for every
new hit; (3) cut c into `bins` (10) equal-mass bins (quantile edges, duplicates removed, so
bins cover disjoint ranges of c); knots (c̄_k, v̄_k) = per-bin means; (4) the local slope of the
new-vs-old map between consecutive knots is s_k = (v̄_{k+1} − v̄_k)/(c̄_{k+1} − c̄_k), clamped to
[0.9, 1.1]; (5) `clamp_rate` = share of the K−1 slopes that had to be clamped; above 0.10 is
calibration drift (P1). The clamped map g rebuilds the knots from the clamped slopes, shifted
so its count-weighted mean equals that of v̄ (the new mean confidence is kept), extended
linearly with the end slopes to c = 0 and c = 1, clipped to [0, 1]. The refitted calibrator
is score ↦ g(prev(score)), exported exactly as breakpoints (prev's breakpoints plus the
preimages of g's knots).

Bad input: a missing column, labels other than 0/1, null keys -> ValueError naming the
column; non-finite scores -> ValueError naming system, cell and count (`nan_policy="raise"`,
default) or dropped and counted in the report's `n_dropped` (`"omit"`). Nothing reaches the
fit that it could crash on, and no metric is a silent NaN: values that cannot be computed are
null with a `reason`.

Why this is one module: the isotonic fit, the calibrator set and the ECE family share one aggregated-score representation (unique scores with counts and positives, `_unique_agg`/`_pav_agg`) and its private merge helpers; that shared core is what makes `fit_cells` beat sklearn, and splitting it would turn those helpers into a public API.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import isotonic_regression

from lens_core.common.hashing import atomic_write_json, canonical_json, sha256_hex

CELL_KEYS: tuple[str, str, str] = ("system", "intent", "language")
LABELLED_COLUMNS: tuple[str, ...] = ("system", "qid", "intent", "language", "score", "label")
LEVEL_CELL, LEVEL_INTENT, LEVEL_SYSTEM = "cell", "intent", "system"
ANY = "*"
FORMAT = "lens-calibrator/1"

DEFAULT_MIN_LABELS = 200
DEFAULT_MIN_PER_CLASS = 5
DEFAULT_GATE = 0.02
DEFAULT_BINS = 10
DEFAULT_MERGE_BINS = 20
DEFAULT_NOISE_REPS = 1000
DEFAULT_NOISE_Q = 0.95
DEFAULT_SLOPE_BOUNDS = (0.9, 1.1)
DEFAULT_DRIFT_RATE = 0.10
SPLIT_SALT = "lens-calibration-split-v1"

STATUS_PASS, STATUS_FAIL, STATUS_INSUFFICIENT = "pass", "fail", "insufficient"


# ---------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------
def qid_split(qids, salt: str = SPLIT_SALT, fit_share: float = 0.5) -> np.ndarray:
    """Boolean array, True = the query is in the fit half. Stable: a salted blake2b hash of
    the qid mapped to [0, 1) and compared with `fit_share`. Hashes unique qids only."""
    s = pl.Series("qid", qids).cast(pl.String)
    if s.len() == 0:
        return np.zeros(0, dtype=bool)
    if s.null_count():
        raise ValueError("qid_split: null qid")
    uniq = s.unique().sort()
    salt_b = salt.encode()
    u = (
        np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(q.encode(), digest_size=8, key=salt_b).digest(), "big")
                for q in uniq.to_list()
            ),
            dtype=np.float64,
            count=uniq.len(),
        )
        / 2.0**64
    )
    table = pl.DataFrame({"qid": uniq, "fit": u < fit_share})
    return s.to_frame().join(table, on="qid", how="left", maintain_order="left")["fit"].to_numpy()


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def _conf_label(conf, label, what: str = "ece") -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(conf, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=np.float64).ravel()
    if c.shape != y.shape:
        raise ValueError(f"{what}: conf has {c.size} values, label {y.size}")
    if c.size == 0:
        raise ValueError(f"{what}: no labelled hits")
    if not np.isfinite(c).all():
        raise ValueError(f"{what}: {int((~np.isfinite(c)).sum())} non-finite confidence(s)")
    if (c < 0).any() or (c > 1).any():
        raise ValueError(f"{what}: confidences must lie in [0, 1]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{what}: labels must be 0 or 1")
    return c, y


def _width_bins(c: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)


def _mass_bins(c: np.ndarray, bins: int) -> np.ndarray:
    order = np.argsort(c, kind="stable")
    ids = np.empty(c.size, dtype=np.int64)
    ids[order] = (np.arange(c.size) * bins) // c.size
    return ids


def _binned_gap(c: np.ndarray, y: np.ndarray, ids: np.ndarray, bins: int) -> float:
    s_c = np.bincount(ids, weights=c, minlength=bins)
    s_y = np.bincount(ids, weights=y, minlength=bins)
    return float(np.abs(s_y - s_c).sum() / c.size)  # Σ (n_b/N)|ȳ_b − c̄_b|


def ece(conf, label, bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error over `bins` equal-width bins, weighted by bin count."""
    c, y = _conf_label(conf, label, "ece")
    return _binned_gap(c, y, _width_bins(c, bins), bins)


def adaptive_ece(conf, label, bins: int = DEFAULT_BINS) -> float:
    """ECE over `bins` equal-mass bins (by confidence rank)."""
    c, y = _conf_label(conf, label, "adaptive_ece")
    return _binned_gap(c, y, _mass_bins(c, bins), bins)


def brier(conf, label) -> float:
    c, y = _conf_label(conf, label, "brier")
    return float(np.mean((c - y) ** 2))


def null_ece_distribution(
    conf, bins: int = DEFAULT_BINS, reps: int = DEFAULT_NOISE_REPS, seed: int = 0, n: int | None = None
) -> np.ndarray:
    """ECE (equal-width) of `reps` perfectly calibrated label draws at these confidences.

    Per bin, the number of positives is drawn Binomial(n_b, mean conf_b). With `n`, bin
    occupancies are first redrawn Multinomial(n, p_b) (the same confidence distribution with
    n labels). Cost O(reps × bins), independent of the number of hits."""
    c = np.asarray(conf, dtype=np.float64).ravel()
    if c.size == 0:
        raise ValueError("null_ece_distribution: no confidences")
    if not np.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise ValueError("null_ece_distribution: confidences must be finite and in [0, 1]")
    ids = _width_bins(c, bins)
    n_b = np.bincount(ids, minlength=bins)
    s_c = np.bincount(ids, weights=c, minlength=bins)
    cbar = np.divide(s_c, n_b, out=np.zeros(bins), where=n_b > 0)
    rng = np.random.default_rng([int(seed), 7])
    if n is None:
        counts = np.broadcast_to(n_b, (reps, bins))
        total = float(c.size)
    else:
        if int(n) < 1:
            raise ValueError("null_ece_distribution: n must be >= 1")
        counts = rng.multinomial(int(n), n_b / n_b.sum(), size=reps)
        total = float(n)
    pos = rng.binomial(counts, np.broadcast_to(cbar, (reps, bins)))
    return np.abs(pos - counts * cbar[None, :]).sum(axis=1) / total


def _query_bin_sums(
    c: np.ndarray, y: np.ndarray, groups, ids: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (query, bin): hit count, Σ conf, Σ label, as dense (Q × bins) matrices."""
    g = np.asarray(groups).ravel()
    if g.shape != c.shape:
        raise ValueError(f"query-resampled ECE null: {g.size} query ids for {c.size} hits")
    _, q = np.unique(g, return_inverse=True)
    nq = int(q.max()) + 1
    cell = q * bins + ids
    size = nq * bins
    n = np.bincount(cell, minlength=size).reshape(nq, bins).astype(np.float64)
    sc = np.bincount(cell, weights=c, minlength=size).reshape(nq, bins)
    sy = np.bincount(cell, weights=y, minlength=size).reshape(nq, bins)
    return n, sc, sy


def query_null_ece_distribution(
    conf,
    label,
    groups,
    bins: int = DEFAULT_BINS,
    reps: int = DEFAULT_NOISE_REPS,
    seed: int = 0,
    n: int | None = None,
    adaptive: bool = False,
) -> np.ndarray:
    """ECE that a perfectly calibrated set shows by chance, resampling QUERIES (issue 17).

    A query's hits are correlated (one query's 50 hits share its difficulty), so the query
    is the sampling unit, not the hit. Queries (`groups`: one id per hit) are drawn with
    replacement (`reps` cluster-bootstrap resamples, counts Multinomial(Q, 1/Q) per resample;
    with `n`, Q' = round(n / mean hits per query) queries are drawn instead, the same
    question for a different label count); in each, the per-bin gap is centred on the full
    sample's gap: ECE* = Σ_b |(Σy*_b − Σc*_b) − n*_b·(ȳ_b − c̄_b)| / N*. Under perfect
    calibration the observed gap is pure sampling error, and this is the distribution of
    that error with the within-query correlation kept. Bins: equal-width on [0, 1] as `ece`,
    or equal-mass as `adaptive_ece` (`adaptive=True`), assigned once on the full sample.
    One (reps × Q) @ (Q × bins) product per statistic: O(reps · Q · bins)."""
    c, y = _conf_label(conf, label, "query_null_ece_distribution")
    ids = _mass_bins(c, bins) if adaptive else _width_bins(c, bins)
    nqb, sc, sy = _query_bin_sums(c, y, groups, ids, bins)
    nq = nqb.shape[0]
    nb = nqb.sum(axis=0)
    gap = np.divide(sy.sum(axis=0) - sc.sum(axis=0), nb, out=np.zeros(bins), where=nb > 0)
    draws = nq if n is None else max(1, int(round(int(n) * nq / c.size)))
    rng = np.random.default_rng([int(seed), 13])
    w = rng.multinomial(draws, np.full(nq, 1.0 / nq), size=reps).astype(np.float64)
    n_star = w @ nqb
    resid = (w @ sy) - (w @ sc) - n_star * gap[None, :]
    total = n_star.sum(axis=1)
    return np.abs(resid).sum(axis=1) / np.maximum(total, 1.0)


def adaptive_ece_noise_floor(conf, bins: int = 10, q: float = 0.95, reps: int = 400, seed: int = 0) -> float:
    """q-quantile of the adaptive ECE (equal-mass bins, as `adaptive_ece`) of perfectly
    calibrated labels at these confidences: per bin, positives ~ Binomial(n_b, mean conf_b)."""
    c = np.asarray(conf, dtype=np.float64).ravel()
    if c.size == 0:
        return math.inf
    order = np.argsort(c, kind="stable")
    ids = np.empty(c.size, dtype=np.int64)
    ids[order] = (np.arange(c.size) * bins) // c.size
    n_b = np.bincount(ids, minlength=bins)
    s_c = np.bincount(ids, weights=c, minlength=bins)
    cbar = np.divide(s_c, n_b, out=np.zeros(bins), where=n_b > 0)
    rng = np.random.default_rng([int(seed), 11])
    pos = rng.binomial(np.broadcast_to(n_b, (reps, bins)), np.broadcast_to(cbar, (reps, bins)))
    null = np.abs(pos - n_b * cbar).sum(axis=1) / c.size
    return float(np.quantile(null, q))


def clustered_noise_floor(
    conf,
    label,
    groups,
    bins: int = DEFAULT_BINS,
    reps: int = DEFAULT_NOISE_REPS,
    seed: int = 0,
    q: float = 0.95,
    adaptive: bool = False,
) -> tuple[float, float]:
    """(floor, null mean): the ECE a calibrated set shows by chance, the larger of two views.
    The query-resampled distribution (`query_null_ece_distribution`) keeps the correlation of
    a query's hits; the perfectly-calibrated label draws (`null_ece_distribution`, or its
    equal-mass twin) keep the Bernoulli noise that a bootstrap of a small cell cannot see (in a
    cell whose few queries all have label 0 the bootstrap has no variance at all). Taking the
    larger never calls a cell judgeable that either view finds too noisy."""
    qn = query_null_ece_distribution(conf, label, groups, bins, reps, seed, adaptive=adaptive)
    floor_q, mean_q = float(np.quantile(qn, q)), float(qn.mean())
    if adaptive:
        floor_h = adaptive_ece_noise_floor(conf, bins, q, reps, seed=seed)
        return max(floor_q, floor_h), mean_q
    hn = null_ece_distribution(conf, bins, reps, seed)
    return max(floor_q, float(np.quantile(hn, q))), max(mean_q, float(hn.mean()))


def ece_noise_floor(
    conf,
    n: int | None = None,
    bins: int = DEFAULT_BINS,
    q: float = DEFAULT_NOISE_Q,
    reps: int = DEFAULT_NOISE_REPS,
    seed: int = 0,
) -> float:
    """The q-quantile (0.95) of ECE under perfect calibration with these confidences (and n
    labels if given): below it, an observed ECE is indistinguishable from noise."""
    return float(np.quantile(null_ece_distribution(conf, bins, reps, seed, n), q))


def debiased_ece(conf, label, bins: int = DEFAULT_BINS, reps: int = DEFAULT_NOISE_REPS, seed: int = 0) -> float:
    """ECE minus its expected value under perfect calibration (simulated), clipped at 0."""
    c, y = _conf_label(conf, label, "debiased_ece")
    raw = _binned_gap(c, y, _width_bins(c, bins), bins)
    return max(0.0, raw - float(null_ece_distribution(c, bins, reps, seed).mean()))


def labels_needed(
    conf,
    gate: float = DEFAULT_GATE,
    bins: int = DEFAULT_BINS,
    q: float = DEFAULT_NOISE_Q,
    reps: int = 400,
    seed: int = 0,
    n_max: int = 10_000_000,
) -> int:
    """Smallest label count (to ~2%) at which the noise floor of this confidence
    distribution drops to `gate` or below (bisection on n)."""

    def floor(n: int) -> float:
        return ece_noise_floor(conf, n=n, bins=bins, q=q, reps=reps, seed=seed)

    lo, hi = 1, 64
    while floor(hi) > gate:
        lo, hi = hi, hi * 2
        if hi > n_max:
            return n_max
    while hi - lo > max(1, lo // 50):
        mid = (lo + hi) // 2
        if floor(mid) > gate:
            lo = mid
        else:
            hi = mid
    return hi


def _unique_agg(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique scores, count, positives) of unsorted scores."""
    uniq, inv = np.unique(s, return_inverse=True)
    return uniq, np.bincount(inv).astype(np.float64), np.bincount(inv, weights=y)


def _run_starts(s: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1))


def _sorted_agg(s: np.ndarray, s_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique scores, count, positives) from the sorted scores of all labels and the sorted
    scores of the positive ones: linear passes and one searchsorted, no sort. Counts are
    integers, so they equal `_unique_agg`'s exactly."""
    if s.size == 0:
        return s, np.zeros(0), np.zeros(0)
    starts = _run_starts(s)
    ux = s[starts]
    cnt = np.diff(np.append(starts, s.size)).astype(np.float64)
    pos = np.zeros(ux.size)
    if s_pos.size:
        p_starts = _run_starts(s_pos)
        pos[np.searchsorted(ux, s_pos[p_starts])] = np.diff(np.append(p_starts, s_pos.size))
    return ux, cnt, pos


def _merge_agg(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The aggregate of the union of several score-sorted aggregates: a stable sort of the
    concatenated runs, then equal scores summed. Counts and positives are integer-valued
    sums, exact in any order."""
    if len(parts) == 1:
        return parts[0]
    ux = np.concatenate([p[0] for p in parts])
    order = np.argsort(ux, kind="stable")
    ux = ux[order]
    new = np.empty(ux.size, dtype=bool)
    new[:1] = True
    np.not_equal(ux[1:], ux[:-1], out=new[1:])
    run = np.cumsum(new) - 1  # each label's unique-score index; bincount sums (faster than reduceat)
    cnt = np.bincount(run, weights=np.concatenate([p[1] for p in parts])[order])
    pos = np.bincount(run, weights=np.concatenate([p[2] for p in parts])[order])
    return ux[new], cnt, pos


def _merged_share_agg(cnt: np.ndarray, pos: np.ndarray, n: int, bins: int = DEFAULT_MERGE_BINS) -> float:
    # Equal-mass bins over unique scores: a unique score goes wholly into one bin.
    cum = np.cumsum(cnt) - cnt / 2
    bid = np.minimum((cum / n * bins).astype(np.int64), bins - 1)
    w = np.bincount(bid, weights=cnt, minlength=bins)
    keep = w > 0
    rate = np.bincount(bid, weights=pos, minlength=bins)[keep] / w[keep]
    if rate.size < 2:
        return 0.0
    fitted = isotonic_regression(rate, weights=w[keep], increasing=True).x
    return float(np.mean(np.abs(fitted - rate) > 1e-12))


def merged_bin_share(score, label, bins: int = DEFAULT_MERGE_BINS) -> float:
    """Share of equal-mass score bins whose positive rate PAV had to pool with a neighbour
    (see the module docstring). Ties in score stay in one bin."""
    s = np.asarray(score, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("merged_bin_share: no labelled hits")
    _, cnt, pos = _unique_agg(s, y)
    return _merged_share_agg(cnt, pos, s.size, bins)


# ---------------------------------------------------------------------------------------------
# Calibrator
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibrator:
    """Monotone map raw score -> confidence: linear interpolation between breakpoints (x, y),
    clipped to y[0] / y[-1] outside [x[0], x[-1]]."""

    x: np.ndarray
    y: np.ndarray
    system: str = ANY
    intent: str = ANY
    language: str = ANY
    level: str = LEVEL_SYSTEM
    n_fit: int = 0
    n_pos: int = 0
    merged_bin_share: float | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        x = np.ascontiguousarray(self.x, dtype=np.float64)
        y = np.ascontiguousarray(self.y, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError(f"calibrator {self.key}: breakpoints x and y must be equal-length, non-empty 1-D arrays")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError(f"calibrator {self.key}: non-finite breakpoint")
        if (np.diff(x) <= 0).any():
            raise ValueError(f"calibrator {self.key}: breakpoint x must be strictly increasing")
        if (np.diff(y) < 0).any() or y[0] < 0 or y[-1] > 1:
            raise ValueError(f"calibrator {self.key}: breakpoint y must be non-decreasing in [0, 1]")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    @property
    def key(self) -> str:
        return f"{self.system}|{self.intent}|{self.language}"

    @property
    def version(self) -> str:
        """First 16 hex of sha256 over the breakpoints: identifies the mapping."""
        return sha256_hex(canonical_json({"x": self.x.tolist(), "y": self.y.tolist()}).encode())[:16]

    def apply(self, scores) -> np.ndarray:
        """Confidences for raw scores (vectorised np.interp). NaN scores raise."""
        s = np.asarray(scores, dtype=np.float64)
        out = np.interp(s, self.x, self.y)
        if np.isnan(out).any():
            raise ValueError(f"calibrator {self.key}: NaN score(s)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "system": self.system,
            "intent": self.intent,
            "language": self.language,
            "level": self.level,
            "n_fit": int(self.n_fit),
            "n_pos": int(self.n_pos),
            "merged_bin_share": None if self.merged_bin_share is None else float(self.merged_bin_share),
            "note": self.note,
            "interpolation": "linear",
            "out_of_range": "clip",
            "version": self.version,
            "x": self.x.tolist(),
            "y": self.y.tolist(),
        }

    def to_json(self) -> str:
        # repr-exact floats: from_json(to_json()) reproduces the breakpoints bit for bit.
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, data: str | bytes | dict) -> "Calibrator":
        d = json.loads(data) if isinstance(data, (str, bytes)) else dict(data)
        if d.get("format") != FORMAT:
            raise ValueError(f"calibrator JSON: format {d.get('format')!r}, expected {FORMAT!r}")
        missing = [k for k in ("x", "y", "system", "intent", "language", "level") if k not in d]
        if missing:
            raise ValueError(f"calibrator JSON: missing field(s) {missing}")
        cal = cls(
            x=np.asarray(d["x"], dtype=np.float64),
            y=np.asarray(d["y"], dtype=np.float64),
            system=d["system"],
            intent=d["intent"],
            language=d["language"],
            level=d["level"],
            n_fit=int(d.get("n_fit", 0)),
            n_pos=int(d.get("n_pos", 0)),
            merged_bin_share=d.get("merged_bin_share"),
            note=d.get("note"),
        )
        if "version" in d and d["version"] != cal.version:
            raise ValueError(
                f"calibrator JSON {cal.key}: version {d['version']} does not match its breakpoints ({cal.version})"
            )
        return cal


def _pav_agg(ux: np.ndarray, w: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PAV on per-unique-score aggregates (see `_pav`)."""
    ym = pos / w
    fitted = isotonic_regression(ym, weights=w, increasing=True).x
    keep = np.ones(ux.size, dtype=bool)
    if ux.size > 2:
        keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return ux[keep], np.clip(fitted[keep], 0.0, 1.0)


def _pav(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) least-squares fit of y on s, as scikit-learn does it:
    duplicates of s are merged (mean label, summed weight), PAV runs on the unique scores
    (scipy's C implementation), and only the first and last score of each constant run are
    kept as thresholds. Returns (thresholds x, fitted y)."""
    return _pav_agg(*_unique_agg(s, y))


def _fit_agg(ux: np.ndarray, cnt: np.ndarray, pos: np.ndarray, **meta) -> Calibrator:
    """The calibrator of aggregated labels: what `fit_isotonic` returns on the raw ones."""
    n = int(cnt.sum())
    x, fy = _pav_agg(ux, cnt, pos)
    return Calibrator(x=x, y=fy, n_fit=n, n_pos=int(pos.sum()), merged_bin_share=_merged_share_agg(cnt, pos, n), **meta)


def fit_isotonic(score, label, **meta) -> Calibrator:
    """Isotonic calibrator of label (0/1) on raw score, with clip outside the fitted range.
    Equal to `sklearn.isotonic.IsotonicRegression(out_of_bounds="clip")` on the same data
    (`sklearn_reference` fits that model for the parity suite)."""
    s = np.asarray(score, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=np.float64).ravel()
    where = " ".join(str(meta.get(k, "")) for k in CELL_KEYS).strip()
    if s.size == 0:
        raise ValueError(f"fit_isotonic {where}: no labelled hits")
    if s.shape != y.shape:
        raise ValueError(f"fit_isotonic {where}: {s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError(f"fit_isotonic {where}: {int((~np.isfinite(s)).sum())} non-finite score(s)")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"fit_isotonic {where}: labels must be 0 or 1")
    return _fit_agg(*_unique_agg(s, y), **meta)


def sklearn_reference(score, label):
    """The in-memory reference model for parity: scikit-learn's
    `IsotonicRegression(increasing=True, out_of_bounds="clip")` fitted on the same data."""
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(increasing=True, out_of_bounds="clip").fit(
        np.asarray(score, dtype=np.float64).ravel(), np.asarray(label, dtype=np.float64).ravel()
    )


def parity(
    calibrator: Calibrator,
    model,
    scores,
    labels,
    grid_points: int = 2001,
    bins: int = DEFAULT_BINS,
    max_abs_tol: float = 1e-6,
    ece_tol: float = 1e-4,
) -> dict:
    """Export-vs-model parity (SPEC §6): max|Δ| over `scores` plus a dense grid spanning and
    overhanging the breakpoints, and |ΔECE| on (scores, labels). Passes when
    max|Δ| <= 1e-6 and |ΔECE| <= 1e-4."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    lo, hi = float(calibrator.x[0]), float(calibrator.x[-1])
    pad = max(hi - lo, 1.0) * 0.1
    grid = np.linspace(lo - pad, hi + pad, grid_points)
    pts = np.concatenate([s, grid, calibrator.x])
    diff = np.abs(calibrator.apply(pts) - np.asarray(model.predict(pts), dtype=np.float64))
    max_abs = float(diff.max())
    d_ece = abs(ece(calibrator.apply(s), labels, bins) - ece(np.clip(model.predict(s), 0, 1), labels, bins))
    return {
        "max_abs_diff": max_abs,
        "ece_diff": float(d_ece),
        "n_points": int(pts.size),
        "passed": bool(max_abs <= max_abs_tol and d_ece <= ece_tol),
        "max_abs_tol": max_abs_tol,
        "ece_tol": ece_tol,
    }


def _level_rows(df: pl.DataFrame, cal: Calibrator) -> pl.DataFrame:
    """The rows a calibrator was fitted on (its level's pooling) within `df`."""
    cond = pl.col("system") == cal.system
    if cal.intent != ANY:
        cond = cond & (pl.col("intent") == cal.intent)
    if cal.language != ANY:
        cond = cond & (pl.col("language") == cal.language)
    return df.filter(cond)


def parity_cells(
    calibrators: "CalibratorSet", df: pl.DataFrame, fit_mask=None, grid_points: int = 2001, bins: int = DEFAULT_BINS
) -> pl.DataFrame:
    """The calibrator parity suite (SPEC §6): for every calibrator of the set, round-trip it
    through its JSON export, refit the scikit-learn reference on the same fit rows, and
    compare on all of the level's scores (fit and held-out) plus a dense grid. One row per
    calibrator: calibrator, version, n_fit, n_scores, max_abs_diff, ece_diff, passed."""
    df, _ = _validate(df, "raise")
    if fit_mask is None:
        fit_mask = qid_split(df.get_column("qid"), salt=calibrators.params.get("split_salt", SPLIT_SALT))
    df = df.with_columns(pl.Series("__fit", np.asarray(fit_mask, dtype=bool)))
    rows = []
    for key, cal in sorted(calibrators.calibrators.items()):
        exported = Calibrator.from_json(cal.to_json())
        part = _level_rows(df, cal)
        fit = part.filter(pl.col("__fit"))
        if fit.height == 0:
            raise ValueError(f"parity: calibrator {key} has no fit rows in the data given")
        ref = sklearn_reference(fit.get_column("score").to_numpy(), fit.get_column("label").to_numpy())
        res = parity(
            exported,
            ref,
            part.get_column("score").to_numpy(),
            part.get_column("label").to_numpy(),
            grid_points=grid_points,
            bins=bins,
        )
        rows.append(
            {
                "calibrator": key,
                "version": exported.version,
                "n_fit": fit.height,
                "n_scores": part.height,
                "max_abs_diff": res["max_abs_diff"],
                "ece_diff": res["ece_diff"],
                "passed": res["passed"],
            }
        )
    schema = {
        "calibrator": pl.String,
        "version": pl.String,
        "n_fit": pl.Int64,
        "n_scores": pl.Int64,
        "max_abs_diff": pl.Float64,
        "ece_diff": pl.Float64,
        "passed": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


# ---------------------------------------------------------------------------------------------
# Validation of labelled hits
# ---------------------------------------------------------------------------------------------
def _check_frame(df: pl.DataFrame) -> None:
    missing = [c for c in LABELLED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"labelled hits: missing column(s) {', '.join(missing)} (have {', '.join(df.columns)})")
    for c in ("system", "qid", "intent", "language"):
        nulls = df.get_column(c).null_count()
        if nulls:
            raise ValueError(f"labelled hits: column {c!r} has {nulls} null value(s)")


def _validate(df: pl.DataFrame, nan_policy: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """-> (clean frame, dropped counts per cell). Raises ValueError naming column/cell."""
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    _check_frame(df)
    try:
        df = df.with_columns(
            pl.col("score").cast(pl.Float64),
            pl.col("label").cast(pl.Float64),
            *[pl.col(c).cast(pl.String) for c in ("system", "qid", "intent", "language")],
        )
    except Exception as e:  # polars raises its own error types
        raise ValueError(f"labelled hits: score/label must be numeric ({e})") from None
    bad_label = df.filter(~pl.col("label").is_in([0.0, 1.0]) | pl.col("label").is_null())
    if bad_label.height:
        r = bad_label.row(0, named=True)
        raise ValueError(
            f"labelled hits: column 'label' must be 0 or 1; {bad_label.height} row(s) "
            f"are not (e.g. system {r['system']!r} qid {r['qid']!r}: {r['label']!r})"
        )
    bad = ~pl.col("score").is_finite().fill_null(False)
    dropped = df.filter(bad).group_by(list(CELL_KEYS)).len(name="n_dropped")
    if dropped.height:
        if nan_policy == "raise":
            r = dropped.sort("n_dropped", descending=True).row(0, named=True)
            raise ValueError(
                f"labelled hits: {int(dropped['n_dropped'].sum())} non-finite score(s) in "
                f"{dropped.height} cell(s), e.g. {r['n_dropped']} in system {r['system']!r} "
                f"cell ({r['intent']}, {r['language']}); pass nan_policy='omit' to drop them"
            )
        df = df.filter(~bad)
    return df, dropped


# ---------------------------------------------------------------------------------------------
# Calibrator sets (one per decision run)
# ---------------------------------------------------------------------------------------------
@dataclass
class CalibratorSet:
    """Calibrators by key (`system|intent|language`, `*` for a backed-off level) and the
    calibrator each (system, intent, language) cell uses."""

    calibrators: dict[str, Calibrator]
    cells: dict[tuple[str, str, str], str]
    params: dict[str, Any] = field(default_factory=dict)

    def resolve(self, system: str) -> str:
        """The system whose calibrators `system` uses: itself, or the system it shares them
        with (`params["shared"]`, e.g. the A/A twin -> its baseline; issue 17)."""
        return str(self.params.get("shared", {}).get(system, system))

    def for_cell(self, system: str, intent: str, language: str) -> Calibrator:
        """The cell's calibrator; an unseen cell backs off to its intent, then its system. A
        system that shares another's calibrators (`resolve`) gets that system's."""
        system = self.resolve(system)
        key = self.cells.get((system, intent, language))
        if key is None:
            for k in (f"{system}|{intent}|{ANY}", f"{system}|{ANY}|{ANY}"):
                if k in self.calibrators:
                    key = k
                    break
            else:
                raise KeyError(
                    f"no calibrator for system {system!r} "
                    f"(cell {intent}/{language}); fitted systems: "
                    f"{sorted({c.system for c in self.calibrators.values()})}"
                )
        return self.calibrators[key]

    def apply(self, system: str, intent: str, language: str, scores) -> np.ndarray:
        return self.for_cell(system, intent, language).apply(scores)

    def apply_frame(self, df: pl.DataFrame, score_col: str = "score") -> np.ndarray:
        """Confidences for a frame with system/intent/language/score columns (vectorised per
        cell)."""
        out = np.empty(df.height, dtype=np.float64)
        idx = df.with_row_index("__i").select("__i", *CELL_KEYS, score_col)
        for (s, i, l), part in idx.partition_by(list(CELL_KEYS), as_dict=True).items():
            rows = part.get_column("__i").to_numpy()
            out[rows] = self.apply(s, i, l, part.get_column(score_col).to_numpy())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT + "-set",
            "params": self.params,
            "calibrators": {k: c.to_dict() for k, c in sorted(self.calibrators.items())},
            "cells": [
                {"system": s, "intent": i, "language": l, "calibrator": k}
                for (s, i, l), k in sorted(self.cells.items())
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, data: str | bytes | dict) -> "CalibratorSet":
        d = json.loads(data) if isinstance(data, (str, bytes)) else dict(data)
        if d.get("format") != FORMAT + "-set":
            raise ValueError(f"calibrator set JSON: format {d.get('format')!r}")
        cals = {k: Calibrator.from_json(v) for k, v in d["calibrators"].items()}
        cells = {(c["system"], c["intent"], c["language"]): c["calibrator"] for c in d["cells"]}
        unknown = sorted({k for k in cells.values() if k not in cals})
        if unknown:
            raise ValueError(f"calibrator set JSON: cells refer to unknown calibrator(s) {unknown}")
        return cls(cals, cells, d.get("params", {}))

    def write(self, directory: str | Path) -> list[Path]:
        """One JSON export per calibrator plus `index.json` (the set), written atomically.
        Returns the paths written (index last)."""
        directory = Path(directory)
        paths = []
        for key, cal in sorted(self.calibrators.items()):
            p = directory / (_safe_name(key) + ".json")
            atomic_write_json(p, cal.to_dict())
            paths.append(p)
        idx = directory / "index.json"
        atomic_write_json(idx, self.to_dict())
        paths.append(idx)
        return paths


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", key.replace("|", "__").replace(ANY, "all"))


def _enough(n: int, n_pos: int, min_labels: int, min_per_class: int) -> bool:
    return n >= min_labels and n_pos >= min_per_class and (n - n_pos) >= min_per_class


def fit_cells(
    df: pl.DataFrame,
    min_labels: int = DEFAULT_MIN_LABELS,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    nan_policy: str = "raise",
) -> CalibratorSet:
    """Fit one isotonic calibrator per (system, intent, language) cell of `df` (the fit half)
    with backoff to (system, intent) and then (system) for cells with fewer than
    `min_labels` labels or fewer than `min_per_class` positives or negatives."""
    df, _ = _validate(df, nan_policy)
    if df.height == 0:
        raise ValueError("fit_cells: no labelled hits")
    # One group-by over the labels: per cell its count, positives, its scores and the scores
    # of its positives (gathered, unsorted: each cell's slice is sorted by numpy in the fit
    # units below). Everything else works on these 40-odd rows.
    grp = (
        df.lazy()
        .group_by(list(CELL_KEYS))
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("label").sum().cast(pl.Int64).alias("n_pos"),
            pl.col("score").alias("s"),
            pl.col("score").filter(pl.col("label") == 1).alias("s1"),
        )
        .sort(list(CELL_KEYS))
        .collect()
    )
    counts = grp.select(*CELL_KEYS, "n", "n_pos")
    by_intent = {
        (r["system"], r["intent"]): (r["n"], r["n_pos"])
        for r in counts.group_by(["system", "intent"])
        .agg(pl.col("n").sum(), pl.col("n_pos").sum())
        .iter_rows(named=True)
    }
    params = {"min_labels": min_labels, "min_per_class": min_per_class}
    plan: dict[tuple[str, str, str], tuple[str, str, str, str]] = {}
    for r in counts.iter_rows(named=True):
        s, i, l = r["system"], r["intent"], r["language"]
        if _enough(r["n"], r["n_pos"], min_labels, min_per_class):
            plan[(s, i, l)] = (s, i, l, LEVEL_CELL)
        elif _enough(*by_intent[(s, i)], min_labels, min_per_class):
            plan[(s, i, l)] = (s, i, ANY, LEVEL_INTENT)
        else:
            plan[(s, i, l)] = (s, ANY, ANY, LEVEL_SYSTEM)
    # Every system gets a system-level calibrator and every eligible intent an intent-level
    # one, so that cells unseen at fit time (for_cell) can back off too.
    extra = {(s, ANY, ANY, LEVEL_SYSTEM) for s, _, _ in plan}
    extra |= {
        (s, i, ANY, LEVEL_INTENT)
        for (s, i), (n, n_pos) in by_intent.items()
        if _enough(n, n_pos, min_labels, min_per_class)
    }
    needed = sorted(set(plan.values()) | extra)
    # Each cell is a contiguous slice (sorted in its fit unit below), aggregated per unique score
    # in one linear pass; intent and system levels merge their cells' aggregates instead of
    # re-sorting labels.
    bounds = np.concatenate(([0], np.cumsum(grp.get_column("n").to_numpy())))
    bounds1 = np.concatenate(([0], np.cumsum(grp.get_column("n_pos").to_numpy())))
    s_all = grp.get_column("s").explode().to_numpy()
    s1_all = grp.get_column("s1").explode(empty_as_null=False).to_numpy()
    del grp
    cell_keys = list(counts.select(CELL_KEYS).iter_rows())

    wanted = set(needed)

    def fit(agg: tuple[np.ndarray, np.ndarray, np.ndarray], s: str, i: str, l: str, level: str) -> Calibrator:
        ux, cnt, pos = agg
        n, n_pos = int(cnt.sum()), int(pos.sum())
        note = None
        if level == LEVEL_SYSTEM and not _enough(n, n_pos, min_labels, min_per_class):
            note = (
                f"system-level pool has {n} labels ({n_pos} relevant); below "
                f"min_labels {min_labels} / min_per_class {min_per_class}"
            )
            if n_pos in (0, n):
                note += f"; all labels are {int(n_pos == n)}: constant calibrator"
        return _fit_agg(ux, cnt, pos, system=s, intent=i, language=l, level=level, note=note)

    def fit_intent(si: tuple[str, str]) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[Calibrator]]:
        """One (system, intent): its cells' aggregates (each cell's slice sorted, then one
        linear pass), their merge (the intent level; no re-sort of labels), and the cell-
        and intent-level fits it needs."""
        s, i = si
        agg = {
            cell: _sorted_agg(np.sort(s_all[bounds[k] : bounds[k + 1]]), np.sort(s1_all[bounds1[k] : bounds1[k + 1]]))
            for k, cell in enumerate(cell_keys)
            if cell[:2] == si
        }
        merged = _merge_agg(list(agg.values()))
        out = [fit(agg[(s, i, l)], s, i, l, LEVEL_CELL) for (_, _, l) in agg if (s, i, l, LEVEL_CELL) in wanted]
        if (s, i, ANY, LEVEL_INTENT) in wanted:
            out.append(fit(merged, s, i, ANY, LEVEL_INTENT))
        return merged, out

    # Units share nothing, so they run in parallel threads (numpy's sorts, gathers and
    # reductions release the GIL): every (system, intent), then every system, whose pool is
    # the merge of its intents' aggregates.
    pairs = sorted({c[:2] for c in cell_keys})

    def fit_system(s: str) -> Calibrator:
        return fit(_merge_agg([m for (ps, _), (m, _) in by_pair.items() if ps == s]), s, ANY, ANY, LEVEL_SYSTEM)

    with ThreadPoolExecutor(max_workers=max(1, min(len(pairs), os.cpu_count() or 1))) as pool:
        by_pair = dict(zip(pairs, pool.map(fit_intent, pairs)))
        fitted = [c for _, part in by_pair.values() for c in part]
        fitted += pool.map(fit_system, sorted({s for s, _ in pairs}))
    cals: dict[str, Calibrator] = {}
    for cal in sorted(fitted, key=lambda c: (c.system, c.intent, c.language, c.level)):
        cals[cal.key] = cal
    cells = {cell: f"{s}|{i}|{l}" for cell, (s, i, l, _) in plan.items()}
    return CalibratorSet(cals, cells, params)


_REPORT_SCHEMA: dict[str, pl.DataType] = {
    "system": pl.String,
    "intent": pl.String,
    "language": pl.String,
    "level": pl.String,
    "calibrator": pl.String,
    "calibrator_version": pl.String,
    "n_fit": pl.Int64,
    "n_eval": pl.Int64,
    "n_pos_eval": pl.Int64,
    "n_dropped": pl.Int64,
    "ece": pl.Float64,
    "adaptive_ece": pl.Float64,
    "debiased_ece": pl.Float64,
    "brier": pl.Float64,
    "merged_bin_share": pl.Float64,
    "noise_floor": pl.Float64,
    "labels_needed": pl.Int64,
    "gate": pl.Float64,
    "status": pl.String,
    "reason": pl.String,
}


def cell_report(
    df: pl.DataFrame,
    calibrators: CalibratorSet,
    fit_mask=None,
    gate: float = DEFAULT_GATE,
    bins: int = DEFAULT_BINS,
    noise_reps: int = DEFAULT_NOISE_REPS,
    noise_q: float = DEFAULT_NOISE_Q,
    seed: int = 0,
    nan_policy: str = "raise",
) -> pl.DataFrame:
    """One row per (system, intent, language) cell of `df`, evaluated on its held-out half
    (`fit_mask` False; default `qid_split(df['qid'])`). Columns: `_REPORT_SCHEMA`."""
    _check_frame(df)
    if fit_mask is None:
        fit_mask = qid_split(df.get_column("qid"), salt=calibrators.params.get("split_salt", SPLIT_SALT))
    fit_mask = np.asarray(fit_mask, dtype=bool)
    if fit_mask.shape != (df.height,):
        raise ValueError(f"cell_report: fit_mask has {fit_mask.size} values for {df.height} rows")
    df, dropped = _validate(df.with_columns(pl.Series("__fit", fit_mask)), nan_policy)
    drop_map = {(r["system"], r["intent"], r["language"]): r["n_dropped"] for r in dropped.iter_rows(named=True)}
    rows = []
    for (s, i, l), part in sorted(df.partition_by(list(CELL_KEYS), as_dict=True).items()):
        fit = part.get_column("__fit").to_numpy()
        ev = part.filter(~pl.col("__fit"))
        row: dict[str, Any] = {k: None for k in _REPORT_SCHEMA}
        row.update(
            system=s,
            intent=i,
            language=l,
            n_fit=int(fit.sum()),
            n_eval=ev.height,
            n_pos_eval=int(ev.get_column("label").sum()),
            gate=float(gate),
            n_dropped=int(drop_map.get((s, i, l), 0)),
        )
        reasons = []
        try:
            cal = calibrators.for_cell(s, i, l)
        except KeyError as e:
            row.update(status=STATUS_INSUFFICIENT, reason=str(e.args[0]))
            rows.append(row)
            continue
        row.update(
            level=cal.level, calibrator=cal.key, calibrator_version=cal.version, merged_bin_share=cal.merged_bin_share
        )
        if calibrators.resolve(s) != s:
            reasons.append(f"shares the calibrators of {calibrators.resolve(s)!r} (identical configuration)")
        if (calibrators.resolve(s), i, l) not in calibrators.cells:
            reasons.append(f"cell not seen at fit time: uses {cal.level}-level calibrator")
        if cal.note:
            reasons.append(cal.note)
        if ev.height == 0:
            reasons.append("no held-out labels")
            row.update(status=STATUS_INSUFFICIENT, reason="; ".join(reasons))
            rows.append(row)
            continue
        y = ev.get_column("label").to_numpy()
        conf = cal.apply(ev.get_column("score").to_numpy())
        floor, null_mean = clustered_noise_floor(
            conf, y, ev.get_column("qid").to_numpy(), bins, noise_reps, seed, noise_q
        )
        e = ece(conf, y, bins)
        row.update(
            ece=e,
            adaptive_ece=adaptive_ece(conf, y, bins),
            debiased_ece=max(0.0, e - null_mean),
            brier=brier(conf, y),
            noise_floor=floor,
            labels_needed=int(math.ceil(ev.height * (floor / gate) ** 2)) if gate > 0 else None,
        )
        if y.min() == y.max():
            reasons.append(f"held-out labels are all {int(y[0])}")
        if floor > gate:
            reasons.append(
                f"noise floor {floor:.4f} > gate {gate} with {ev.height} held-out "
                f"labels (needs ~{row['labels_needed']})"
            )
            row["status"] = STATUS_INSUFFICIENT
        else:
            row["status"] = STATUS_PASS if e <= gate else STATUS_FAIL
            if e > gate:
                reasons.append(f"ECE {e:.4f} > gate {gate}")
        row["reason"] = "; ".join(reasons) or None
        rows.append(row)
    return pl.DataFrame(rows, schema=_REPORT_SCHEMA) if rows else pl.DataFrame(schema=_REPORT_SCHEMA)


def calibrate(
    df: pl.DataFrame,
    min_labels: int = DEFAULT_MIN_LABELS,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    gate: float = DEFAULT_GATE,
    bins: int = DEFAULT_BINS,
    noise_reps: int = DEFAULT_NOISE_REPS,
    seed: int = 0,
    nan_policy: str = "raise",
    salt: str = SPLIT_SALT,
    shared: dict[str, str] | None = None,
) -> tuple[CalibratorSet, pl.DataFrame]:
    """Split by qid, fit on the fit half, report on the held-out half.

    `shared` maps a system to the system whose calibrators it uses (the A/A twin -> its
    baseline, issue 17): identical configurations get one calibrator, not two fitted on
    different noise; the sharing system's labels are not fitted, only reported."""
    shared = dict(shared or {})
    for twin, owner in shared.items():
        if twin == owner or owner in shared:
            raise ValueError(f"calibrate: shared {twin!r} -> {owner!r}: must name a system that fits its own")
    clean, _ = _validate(df, nan_policy)
    mask = qid_split(clean.get_column("qid"), salt=salt)
    if shared:
        mask = mask & ~clean.get_column("system").is_in(list(shared)).to_numpy()
    if not mask.any():
        raise ValueError("calibrate: the qid split left no query in the fit half")
    cals = fit_cells(clean.filter(pl.Series(mask)), min_labels, min_per_class)
    cals.params.update(split_salt=salt, gate=gate, bins=bins)
    if shared:
        cals.params["shared"] = shared
    return cals, cell_report(df, cals, gate=gate, bins=bins, noise_reps=noise_reps, seed=seed, nan_policy=nan_policy)


# ---------------------------------------------------------------------------------------------
# Weekly refit with slope clamp
# ---------------------------------------------------------------------------------------------
@dataclass
class RefitResult:
    calibrator: Calibrator  # score -> g(prev(score)), the clamped refit
    unclamped: Calibrator | None  # plain isotonic fit on the new data
    knots_conf: np.ndarray  # c̄_k, current confidence per equal-mass bin
    knots_new: np.ndarray  # v̄_k, new confidence per bin
    slopes: np.ndarray  # s_k between consecutive knots (K−1)
    clamped: np.ndarray  # bool per slope
    clamp_rate: float | None  # share of clamped slopes; None when not computable
    drift: bool
    reason: str | None
    map_conf: np.ndarray = field(default_factory=lambda: np.zeros(0))  # clamped map g: knots c
    map_new: np.ndarray = field(default_factory=lambda: np.zeros(0))  # g(c)


def _merge_close_bins(
    cbar: np.ndarray, vbar: np.ndarray, w: np.ndarray, min_gap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge adjacent equal-mass bins (weighted means) until consecutive mean confidences are at
    least `min_gap` apart. Most hits sit at low confidence, where equal-mass bins differ by a few
    thousandths: a slope between them is a ratio of noise and would be clamped by chance."""
    out_c, out_v, out_w = [cbar[0]], [vbar[0]], [w[0]]
    for c, v, wt in zip(cbar[1:], vbar[1:], w[1:]):
        if c - out_c[-1] < min_gap:
            tw = out_w[-1] + wt
            out_c[-1] = (out_c[-1] * out_w[-1] + c * wt) / tw
            out_v[-1] = (out_v[-1] * out_w[-1] + v * wt) / tw
            out_w[-1] = tw
        else:
            out_c.append(c)
            out_v.append(v)
            out_w.append(wt)
    return np.asarray(out_c), np.asarray(out_v), np.asarray(out_w)


def refit_with_clamp(
    prev: Calibrator,
    scores,
    labels,
    bins: int = DEFAULT_BINS,
    slope_bounds: tuple[float, float] = DEFAULT_SLOPE_BOUNDS,
    drift_rate: float = DEFAULT_DRIFT_RATE,
    min_labels: int = DEFAULT_MIN_LABELS,
    min_gap: float = 0.02,
) -> RefitResult:
    """Weekly refit of `prev` on new labelled hits with the slope clamp (module docstring).

    Slopes are measured between equal-mass bins of the current confidence after merging bins
    whose mean confidences are closer than `min_gap` (the ECE gate's resolution)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"refit {prev.key}: {s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError(f"refit {prev.key}: {int((~np.isfinite(s)).sum())} non-finite score(s)")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"refit {prev.key}: labels must be 0 or 1")
    empty = np.zeros(0)

    def unchanged(reason: str, new: Calibrator | None = None) -> RefitResult:
        return RefitResult(
            prev, new, empty, empty, empty, np.zeros(0, bool), None, False, reason + "; current calibrator kept"
        )

    if s.size < min_labels:
        return unchanged(f"{s.size} new labels < min_labels {min_labels}")
    meta = dict(system=prev.system, intent=prev.intent, language=prev.language, level=prev.level)
    new = fit_isotonic(s, y, **meta)
    c = prev.apply(s)
    v = new.apply(s)
    edges = np.unique(np.quantile(c, np.linspace(0, 1, bins + 1)))
    ids = np.searchsorted(edges[1:-1], c, side="right")
    nb = np.bincount(ids, minlength=edges.size - 1 if edges.size > 1 else 1)
    keep = nb > 0
    cbar = np.bincount(ids, weights=c, minlength=nb.size)[keep] / nb[keep]
    vbar = np.bincount(ids, weights=v, minlength=nb.size)[keep] / nb[keep]
    w = nb[keep].astype(np.float64)
    cbar, vbar, w = _merge_close_bins(cbar, vbar, w, min_gap)
    if cbar.size < 2:
        return unchanged("current confidence takes fewer than 2 distinct bins", new)
    dc = np.diff(cbar)
    slopes = np.diff(vbar) / dc
    lo, hi = slope_bounds
    clamped = (slopes < lo) | (slopes > hi)
    cs = np.clip(slopes, lo, hi)
    knots = np.concatenate([[0.0], np.cumsum(cs * dc)])
    knots += np.average(vbar, weights=w) - np.average(knots, weights=w)
    g_x = cbar
    g_y = knots
    # linear extension to c = 0 and c = 1 with the clamped end slopes
    if g_x[0] > 0:
        g_x = np.concatenate([[0.0], g_x])
        g_y = np.concatenate([[g_y[0] - cs[0] * cbar[0]], g_y])
    if g_x[-1] < 1:
        g_x = np.concatenate([g_x, [1.0]])
        g_y = np.concatenate([g_y, [g_y[-1] + cs[-1] * (1.0 - cbar[-1])]])
    g_y = np.clip(g_y, 0.0, 1.0)
    # exact composition score -> g(prev(score)): prev's breakpoints + preimages of g's knots
    pre = np.interp(g_x, prev.y, prev.x)
    xs = np.unique(np.concatenate([prev.x, pre]))
    ys = np.interp(prev.apply(xs), g_x, g_y)
    rate = float(clamped.mean())
    drift = rate > drift_rate
    refit = Calibrator(
        x=xs,
        y=np.maximum.accumulate(ys),
        n_fit=int(s.size),
        n_pos=int(y.sum()),
        merged_bin_share=new.merged_bin_share,
        note=f"weekly refit of {prev.version}: clamp_rate {rate:.3f}",
        **meta,
    )
    reason = (
        (
            f"calibration drift: {int(clamped.sum())}/{clamped.size} slopes outside "
            f"[{lo}, {hi}] (clamp_rate {rate:.3f} > {drift_rate})"
        )
        if drift
        else None
    )
    return RefitResult(refit, new, cbar, vbar, slopes, clamped, rate, drift, reason, g_x, g_y)


def refit_cells(
    prev: CalibratorSet, df: pl.DataFrame, nan_policy: str = "raise", **kwargs
) -> tuple[CalibratorSet, pl.DataFrame]:
    """Refit every calibrator of `prev` on the new labelled hits of the cells that use it.
    Returns the new set (same cell mapping) and one row per calibrator: calibrator, level,
    n_new, bins, clamp_rate, drift, reason."""
    df, _ = _validate(df, nan_policy)
    users: dict[str, list[tuple[str, str, str]]] = {}
    for cell, key in prev.cells.items():
        users.setdefault(key, []).append(cell)
    keyed = df.with_columns(pl.concat_str([pl.col(c) for c in CELL_KEYS], separator="|").alias("__cell"))
    new_cals: dict[str, Calibrator] = {}
    rows = []
    for key, cal in sorted(prev.calibrators.items()):
        cells = ["|".join(c) for c in users.get(key, [])]
        part = keyed.filter(pl.col("__cell").is_in(cells))
        res = refit_with_clamp(cal, part.get_column("score").to_numpy(), part.get_column("label").to_numpy(), **kwargs)
        new_cals[key] = res.calibrator
        rows.append(
            {
                "calibrator": key,
                "level": cal.level,
                "n_new": part.height,
                "bins": int(res.knots_conf.size),
                "clamp_rate": res.clamp_rate,
                "drift": res.drift,
                "reason": res.reason,
            }
        )
    schema = {
        "calibrator": pl.String,
        "level": pl.String,
        "n_new": pl.Int64,
        "bins": pl.Int64,
        "clamp_rate": pl.Float64,
        "drift": pl.Boolean,
        "reason": pl.String,
    }
    return CalibratorSet(new_cals, dict(prev.cells), dict(prev.params)), pl.DataFrame(rows, schema=schema)
