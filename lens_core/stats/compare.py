"""A/B statistics over per-query metrics (SPEC §5): paired bootstrap CIs, sign-flip tests,
Holm, minimum detectable effect, the paired equivalence test (`tost_paired`, TOST; issue 17)
and the `compare` decision table.

Conventions
-----------
* A *decision* is one (control, test) pair. Its *family* is every (metric × slice) row of that
  pair; Holm is applied across the family (rows whose p-value is not computed are outside it).
  A slice whose queries are exactly those of an earlier slice (`all` first) is the same test:
  it is reported as an alias (its first slice's numbers and p_holm, said in `reason`) and is
  not a member of the family (issue 19: on TREC input every slice duplicates `all`).
* Pairing: the two systems' per-query rows are inner-joined on `qid`; `n` is the number of
  paired queries in a slice. The per-query difference is `test − control`, so `delta > 0`
  means the test arm scores higher.
* CIs: percentile bootstrap of the mean per-query difference (scipy's
  `bootstrap(..., paired=True, method="percentile")` up to Monte-Carlo error). Slices are
  resampled *within* the slice: for each slice dimension (all / intent / language / suite) one
  stratified multinomial count matrix (B × n, drawn in chunks) is shared by every metric and
  every slice of that dimension, and the bootstrap means are one matrix product
  `counts @ diffs`.
* p-values: paired randomisation test with random sign flips of the per-query differences,
  two-sided, `p = (#{|T*| >= |T_obs|} + 1) / (B + 1)` with `T = mean difference`. One ±1 sign
  matrix (B × n, drawn in chunks of bounded size) is shared by every metric and slice of the
  decision (a sub-selection of independent flips is again independent flips), and all null
  statistics are one chunked matrix product `signs @ diffs`.
* One seed per decision. Random streams are derived from it deterministically
  (`numpy.random.default_rng([seed, stream])`), so results are reproducible and the seed is
  recorded in every output row. `compare_many` derives each decision's seed from a base seed
  and the pair names (`decision_seed`).
* MDE: paired two-sided test at level α with the requested power, **t-based**:
  `(t_{1-α/2, n-1} + t_{power, n-1}) · sd_diff / √n` (tends to the normal-approximation
  `(z_{1-α/2} + z_{power}) · sd/√n` for large n; `dist="z"` gives that form).

Bad input (never a crash deep in numpy, never a silent NaN)
-----------------------------------------------------------
* A slice with fewer than `min_n` paired queries -> status `insufficient_n`; delta (and sd/MDE
  when n >= 2) are reported, CI, p and p_holm are null.
* No overlapping qids between the two systems -> one row per metric for slice `all`, n = 0,
  status `no_overlap`, numbers null.
* Zero variance of the per-query difference in a slice (e.g. both arms constant) -> status
  `zero_variance`; delta exact, CI degenerate `[d, d]`, p = 1.0 when d == 0 (the sign-flip
  p-value otherwise, which is valid for a constant non-zero shift), MDE = 0.
* Non-finite metric values (NaN/inf): `nan_policy="raise"` (default) raises a ValueError naming
  the system, metric, how many qids and the first few; `nan_policy="omit"` drops every qid
  with a non-finite value in any requested metric of either arm (so `n` is the same for all
  metrics of a slice) and says how many in `reason`. SPEC §4 scores a failed query 0, so a NaN
  in the per-query table is an upstream bug; raising is the default.
* A system named in the pair but absent from the table, a missing column, duplicate
  (system, qid) rows, or qids whose slice attributes differ between the two arms -> ValueError
  naming the system/column/qid.
* Null slice attributes are reported as the value `unknown`.

Why this is one module: the paired bootstrap, the sign-flip randomisation test, Holm and the MDE run as one vectorised pass over the same resample indices per comparison; splitting would re-draw or pass the index matrices between modules.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from lens_core.common.contracts import COMPARISONS_SCHEMA, SLICE_ALL, SLICE_DIMENSIONS
from lens_core.common.hashing import sha256_hex
from lens_core.stats.bootstrap import bootstrap_means, percentile_ci

DEFAULT_B_CI = 2000
DEFAULT_B_PERM = 10_000
DEFAULT_MIN_N = 10
# Random numbers per chunk of a B × n matrix (~16 MB as float64): memory stays bounded
# whatever B and n are.
CHUNK_ELEMS = 2000000
_STREAM_SIGNS = 0  # rng stream ids derived from one decision seed
_STREAM_BOOT = 1

STATUS_OK = "ok"
STATUS_INSUFFICIENT = "insufficient_n"
STATUS_NO_OVERLAP = "no_overlap"
STATUS_ZERO_VAR = "zero_variance"

EXTRA_COLUMNS: dict[str, pl.DataType] = {
    "n": pl.Int64,
    "sd_diff": pl.Float64,
    "mde": pl.Float64,
    "seed": pl.Int64,
    "status": pl.String,
    "reason": pl.String,
    "needed_effect": pl.Float64,
    "power_ok": pl.Boolean,
}
_PL_TYPES = {"string": pl.String, "double": pl.Float64}
OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    **{f.name: _PL_TYPES[str(f.type)] for f in COMPARISONS_SCHEMA},
    **EXTRA_COLUMNS,
}


# ---------------------------------------------------------------------------------------------
# Resampling engines (chunked, vectorised)
# ---------------------------------------------------------------------------------------------
def _row_chunks(b: int, n: int) -> Iterable[tuple[int, int]]:
    rows = max(1, CHUNK_ELEMS // max(n, 1))
    for start in range(0, b, rows):
        yield start, min(b, start + rows)


def _rng(seed: int, stream: int, sub: int = 0) -> np.random.Generator:
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng([int(seed), stream, sub])


def _signflip_exceed(cols: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    """For each column of `cols` (n × K; zeros where a query is outside the column's slice),
    count the sign-flip resamples whose |Σ s_i d_i| >= |Σ d_i| (two-sided). Returns (K,) int."""
    n, k = cols.shape
    t_obs = np.abs(cols.sum(axis=0))
    # Ties (discrete metrics) must count as exceedances despite summation-order rounding.
    gamma = 1e-10 * np.maximum(np.abs(cols).sum(axis=0), 1e-300)
    threshold = t_obs - gamma
    col_sum = cols.sum(axis=0)
    count = np.zeros(k, dtype=np.int64)
    nbytes = (n + 7) // 8
    for start, stop in _row_chunks(b, n):
        rows = stop - start
        bits = np.unpackbits(rng.integers(0, 256, size=(rows, nbytes), dtype=np.uint8), axis=1, count=n)
        # signs = 1 − 2·bits, so signs @ cols = colsum − 2·(bits @ cols)
        t_star = col_sum[None, :] - 2.0 * (bits.astype(np.float64) @ cols)
        count += (np.abs(t_star) >= threshold[None, :]).sum(axis=0)
    return count


def _stratified_boot_sums(cols: np.ndarray, codes: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap sums (B × K) of the columns of `cols` (n × K), resampling with replacement
    *within* each stratum of `codes` (n,): each stratum's counts are Multinomial(n_s, 1/n_s).
    With one stratum this is the ordinary bootstrap. Counts come from uniform index draws
    turned into counts with one bincount per chunk, then one matrix product."""
    n, k = cols.shape
    order = np.argsort(codes, kind="stable")
    _, start_idx, sizes = np.unique(codes[order], return_index=True, return_counts=True)
    cols_sorted = cols[order]
    out = np.empty((b, k), dtype=np.float64)
    for start, stop in _row_chunks(b, n):
        rows = stop - start
        draws = np.empty((rows, n), dtype=np.int64)
        for s0, size in zip(start_idx.tolist(), sizes.tolist()):  # strata, not queries
            draws[:, s0 : s0 + size] = rng.integers(s0, s0 + size, size=(rows, size))
        draws += (np.arange(rows, dtype=np.int64) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)
        out[start:stop] = counts.astype(np.float64) @ cols_sorted
    return out


# ---------------------------------------------------------------------------------------------
# Public primitives
# ---------------------------------------------------------------------------------------------
def _as_2d(name: str, a) -> np.ndarray:
    v = np.atleast_2d(np.asarray(a, dtype=np.float64))
    if v.ndim != 2:
        raise ValueError(f"{name}: expected a 1-D or 2-D array, got shape {np.shape(a)}")
    if v.shape[1] == 0:
        raise ValueError(f"{name}: no queries (n = 0)")
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).sum())
        raise ValueError(f"{name}: {bad} non-finite value(s) (NaN/inf)")
    return v


def paired_bootstrap_ci(
    control, test, b: int = DEFAULT_B_CI, seed: int = 0, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired percentile bootstrap of the mean difference `test − control`.

    `control`, `test`: arrays (m, n) — m metrics over the same n queries, column j of both is
    query j (1-D is one metric). All rows share the same resamples. Returns
    `(delta, ci_low, ci_high)`, each of shape (m,).
    """
    c, t = _as_2d("control", control), _as_2d("test", test)
    if c.shape != t.shape:
        raise ValueError(f"control shape {c.shape} != test shape {t.shape}: pair the queries first")
    d = t - c
    dist = bootstrap_means(d, b=b, seed=seed)
    lo, hi = percentile_ci(dist, alpha)
    delta = d.mean(axis=1)
    const = np.ptp(d, axis=1) == 0
    lo = np.where(const, d[:, 0], lo)
    hi = np.where(const, d[:, 0], hi)
    return delta, lo, hi


def sign_flip_pvalue(diffs, b: int = DEFAULT_B_PERM, seed: int = 0) -> np.ndarray:
    """Two-sided paired randomisation (sign-flip) test of mean(diffs) = 0, per row.

    `diffs`: (m, n) per-query differences. p = (#{|T*| >= |T_obs|} + 1) / (b + 1), T = mean.
    All rows share one ±1 sign matrix drawn from `seed` in chunks (memory ~ CHUNK_ELEMS).
    """
    d = _as_2d("diffs", diffs)
    count = _signflip_exceed(np.ascontiguousarray(d.T), b, _rng(seed, _STREAM_SIGNS))
    return (count + 1.0) / (b + 1.0)


def tost_paired(diffs, margins, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Paired equivalence test (two one-sided t-tests, TOST), per row of `diffs`.

    `diffs`: (m, n) per-query differences `test − control` (1-D is one metric); `margins`:
    scalar or (m,) equivalence margins δ > 0. For each row, with d̄ the mean, s its sd
    (ddof 1) and se = s/√n, df = n − 1:

    * lower test, H0: μ <= −δ vs H1: μ > −δ: `p_lower = P(T_df >= (d̄ + δ)/se)`;
    * upper test, H0: μ >= +δ vs H1: μ < +δ: `p_upper = P(T_df <= (d̄ − δ)/se)`;
    * `p_tost = max(p_lower, p_upper)`; `equivalent = p_tost < alpha` (the 1 − 2α CI of μ
      lies inside (−δ, δ));
    * `beyond`: the difference is significantly *outside* the margin, the complementary
      one-sided tests (H0: μ <= δ, rejected when `1 − p_upper < alpha`; or H0: μ >= −δ,
      rejected when `1 − p_lower < alpha`).

    The same numbers as `scipy.stats.ttest_rel(test, control − δ, alternative="greater")` and
    `ttest_rel(test, control + δ, alternative="less")`, vectorised over rows. Zero variance:
    a constant difference inside (−δ, δ) gives p 0 for both tests, on or outside it p 1 for
    the side it violates. Returns arrays of shape (m,): delta, sd, n, margin, p_lower, p_upper,
    p_tost, equivalent, beyond.
    """
    from scipy import stats as st

    d = _as_2d("diffs", diffs)
    m, n = d.shape
    if n < 2:
        raise ValueError(f"tost_paired: need >= 2 paired queries, got {n}")
    marg = np.broadcast_to(np.asarray(margins, dtype=np.float64), (m,)).copy()
    if not (np.isfinite(marg).all() and (marg > 0).all()):
        raise ValueError(f"tost_paired: margins must be finite and > 0, got {marg.tolist()}")
    if not 0 < alpha < 1:
        raise ValueError(f"tost_paired: alpha must lie in (0, 1), got {alpha}")
    mean = d.mean(axis=1)
    sd = d.std(axis=1, ddof=1)
    se = sd / math.sqrt(n)
    zero = se == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo = np.where(zero, 0.0, (mean + marg) / np.where(zero, 1.0, se))
        t_hi = np.where(zero, 0.0, (mean - marg) / np.where(zero, 1.0, se))
    p_lower = st.t.sf(t_lo, n - 1)
    p_upper = st.t.cdf(t_hi, n - 1)
    p_lower = np.where(zero, np.where(mean > -marg, 0.0, 1.0), p_lower)
    p_upper = np.where(zero, np.where(mean < marg, 0.0, 1.0), p_upper)
    p_tost = np.maximum(p_lower, p_upper)
    beyond = ((1.0 - p_upper) < alpha) | ((1.0 - p_lower) < alpha)
    return {
        "delta": mean,
        "sd": sd,
        "n": np.full(m, n, dtype=np.int64),
        "margin": marg,
        "p_lower": p_lower,
        "p_upper": p_upper,
        "p_tost": p_tost,
        "equivalent": p_tost < alpha,
        "beyond": beyond,
    }


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1).

    Same arithmetic as `statsmodels.stats.multitest.multipletests(p, method="holm")[1]`, so
    equal to it exactly. NaN entries are outside the family and stay NaN.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("holm: p-values must lie in [0, 1]")
    q = p[ok]
    order = np.argsort(q)
    m = q.size
    adj = np.maximum.accumulate(q[order] * np.arange(m, 0, -1))
    adj[adj > 1] = 1.0
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def mde(sd_diff, n, alpha: float = 0.05, power: float = 0.8, dist: str = "t"):
    """Minimum detectable effect of a paired two-sided test at level `alpha` and `power`.

    `dist="t"` (default): `(t_{1-α/2, n-1} + t_{power, n-1}) · sd_diff / √n`;
    `dist="z"`: the normal approximation `(z_{1-α/2} + z_{power}) · sd_diff / √n`.
    Vectorised over `sd_diff` and `n`; n < 2 gives NaN (no variance estimate).
    """
    from scipy import stats as st

    sd = np.asarray(sd_diff, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    if dist == "z":
        k = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
    elif dist == "t":
        df = np.where(nn >= 2, nn - 1, np.nan)
        k = st.t.ppf(1 - alpha / 2, df) + st.t.ppf(power, df)
    else:
        raise ValueError(f"mde: dist must be 't' or 'z', got {dist!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(nn >= 2, k * sd / np.sqrt(np.maximum(nn, 1)), np.nan)
    return float(out) if out.ndim == 0 else out


def decision_seed(base_seed: int, control: str, test: str) -> int:
    """Deterministic per-decision seed from a base seed and the pair names (63-bit)."""
    h = sha256_hex(f"{int(base_seed)}\x1f{control}\x1f{test}".encode())
    return int(h[:16], 16) & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------
def _check_columns(df: pl.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"per_query: missing column(s) {', '.join(missing)} (have {', '.join(df.columns)})")


def _arm(
    per_query: pl.DataFrame, system: str, metrics: Sequence[str], dims: Sequence[str], nan_policy: str
) -> tuple[pl.DataFrame, dict[str, int]]:
    arm = per_query.filter(pl.col("system") == system)
    if arm.height == 0:
        have = sorted(per_query.get_column("system").unique().drop_nulls().to_list())
        raise ValueError(f"system {system!r} has no rows in per_query (systems: {have})")
    dup = arm.group_by("qid").len().filter(pl.col("len") > 1)
    if dup.height:
        ex = dup.get_column("qid").head(3).to_list()
        raise ValueError(
            f"system {system!r}: {dup.height} qid(s) appear more than once (e.g. {ex}); pass one run per system"
        )
    arm = arm.select(
        [
            "qid",
            *[pl.col(d).cast(pl.String).fill_null("unknown") for d in dims],
            *[pl.col(m).cast(pl.Float64) for m in metrics],
        ]
    )
    bad_counts: dict[str, int] = {}
    for m in metrics:
        bad = arm.filter(~pl.col(m).is_finite() | pl.col(m).is_null())
        if bad.height:
            if nan_policy == "raise":
                ex = bad.get_column("qid").head(3).to_list()
                raise ValueError(
                    f"system {system!r}, metric {m!r}: {bad.height} qid(s) with a "
                    f"non-finite or null value (e.g. {ex}); a failed query must "
                    f"score 0 (SPEC §4), or pass nan_policy='omit'"
                )
            bad_counts[m] = bad.height
    return arm, bad_counts


def _empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=OUTPUT_SCHEMA)


def compare(
    per_query: pl.DataFrame,
    control: str,
    test: str,
    metrics: Sequence[str],
    slices: Sequence[str] = (SLICE_ALL, *SLICE_DIMENSIONS),
    b_ci: int = DEFAULT_B_CI,
    b_perm: int = DEFAULT_B_PERM,
    seed: int = 0,
    alpha: float = 0.05,
    needed_effect: dict[str, float] | None = None,
    min_n: int = DEFAULT_MIN_N,
    power: float = 0.8,
    nan_policy: str = "raise",
    aliases: str = "any",
) -> pl.DataFrame:
    """One decision: paired deltas of `test − control` per metric and slice.

    `aliases`: which slices are the same test as an earlier slice and so are reported as its
    alias, outside the Holm family: "any" (default) a slice whose paired queries are those of an
    earlier slice (`intent=all` on TREC input holds every query, like `all`; the reference
    engine's `suite=identifier` is `intent=identifier`): the same queries are the same test, and
    counting it twice makes Holm harsher for nothing; "all" only those holding every paired
    query; "none" keeps every slice in the family.

    Returns a polars DataFrame whose first columns are exactly `COMPARISONS_SCHEMA`
    (control, test, slice, metric, delta, ci_low, ci_high, p_value, p_holm), then
    n, sd_diff, mde, seed, status, reason, needed_effect, power_ok (`mde <= needed_effect`,
    null when no needed effect is given for the metric or MDE is not computed).
    Slices: `all`, `intent=<x>`, `language=<y>`, `suite=<z>` in the order of `slices`, values
    sorted. Holm runs across every row of this call that has a p-value.
    """
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    metrics = list(metrics)
    if not metrics:
        raise ValueError("compare: no metrics given")
    unknown = [s for s in slices if s != SLICE_ALL and s not in SLICE_DIMENSIONS]
    if unknown:
        raise ValueError(
            f"compare: unknown slice dimension(s) {unknown}; use {SLICE_ALL!r} or {list(SLICE_DIMENSIONS)}"
        )
    if b_ci < 1 or b_perm < 1:
        raise ValueError("compare: b_ci and b_perm must be >= 1")
    if aliases not in ("all", "any", "none"):
        raise ValueError(f"compare: aliases must be 'all', 'any' or 'none', not {aliases!r}")
    dims = [s for s in slices if s != SLICE_ALL]
    _check_columns(per_query, ["system", "qid", *dims, *metrics])
    seed = int(seed)
    _rng(seed, 0)  # validates the seed
    needed_effect = needed_effect or {}

    ctrl, bad_c = _arm(per_query, control, metrics, dims, nan_policy)
    tst, bad_t = _arm(per_query, test, metrics, dims, nan_policy)
    joined = ctrl.join(tst, on="qid", how="inner", suffix="__t")
    for d in dims:
        mism = joined.filter(pl.col(d) != pl.col(f"{d}__t"))
        if mism.height:
            r = mism.row(0, named=True)
            raise ValueError(
                f"{mism.height} qid(s) have a different {d!r} in {control!r} and "
                f"{test!r} (e.g. qid {r['qid']!r}: {r[d]!r} vs {r[f'{d}__t']!r})"
            )

    notes: list[str] = []
    if nan_policy == "omit" and (bad_c or bad_t):
        finite = pl.all_horizontal(
            [pl.col(m).is_finite().fill_null(False) for m in metrics]
            + [pl.col(f"{m}__t").is_finite().fill_null(False) for m in metrics]
        )
        before = joined.height
        joined = joined.filter(finite)
        detail = ", ".join(
            [f"{control}.{m}: {k}" for m, k in bad_c.items()] + [f"{test}.{m}: {k}" for m, k in bad_t.items()]
        )
        notes.append(f"excluded {before - joined.height} paired qid(s) with non-finite values ({detail})")
    joined = joined.sort("qid")
    n_all = joined.height

    rows: list[dict] = []

    def base(slice_name: str, metric: str) -> dict:
        return {
            "control": control,
            "test": test,
            "slice": slice_name,
            "metric": metric,
            "delta": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "p_holm": None,
            "n": 0,
            "sd_diff": None,
            "mde": None,
            "seed": seed,
            "status": STATUS_OK,
            "reason": "; ".join(notes) or None,
            "needed_effect": needed_effect.get(metric),
            "power_ok": None,
        }

    if n_all == 0:
        for m in metrics:
            r = base(SLICE_ALL, m)
            r.update(
                status=STATUS_NO_OVERLAP,
                reason=f"no qid present in both {control!r} ({ctrl.height} qids) and {test!r} ({tst.height} qids)",
            )
            rows.append(r)
        return _finish(rows)

    diffs = joined.select([pl.col(f"{m}__t") - pl.col(m) for m in metrics]).to_numpy().astype(np.float64)  # n × M

    # Slice membership: one (dimension -> codes, names) per requested dimension.
    groups: list[tuple[str, np.ndarray, list[str]]] = []
    for s in slices:
        if s == SLICE_ALL:
            groups.append((SLICE_ALL, np.zeros(n_all, dtype=np.int64), [SLICE_ALL]))
        else:
            vals = joined.get_column(s).to_numpy()
            names, codes = np.unique(vals.astype(str), return_inverse=True)
            groups.append((s, codes.astype(np.int64), [f"{s}={v}" for v in names]))

    # Columns of the family matrix: (slice, metric) with zeros outside the slice.
    col_blocks: list[np.ndarray] = []
    col_meta: list[tuple[int, int, int]] = []  # (group index, stratum code, metric index)
    pending: list[dict] = []
    # A slice holding the same queries as an earlier one (`all` first: on TREC input every
    # query's intent, language and suite is "all") is the same test, not another member of
    # the Holm family: it is reported as an alias of the first, with its numbers.
    first_slice: dict[bytes, str] = {}
    by_slice: dict[tuple[str, str], dict] = {}
    alias_rows: list[tuple[dict, str]] = []
    for gi, (_, codes, names) in enumerate(groups):
        sizes = np.bincount(codes, minlength=len(names))
        for sc, name in enumerate(names):
            member = codes == sc
            key = np.packbits(member).tobytes()
            canon = first_slice.setdefault(key, name) if aliases == "any" or member.all() else name
            if aliases != "none" and canon != name:
                for m in metrics:
                    r = base(name, m)
                    alias_rows.append((r, canon))
                    rows.append(r)
                continue
            ns = int(sizes[sc])
            d_s = diffs[member]
            for mi, m in enumerate(metrics):
                r = base(name, m)
                by_slice[(name, m)] = r
                r["n"] = ns
                x = d_s[:, mi]
                r["delta"] = float(x.mean())
                if ns >= 2:
                    r["sd_diff"] = float(x.std(ddof=1))
                if ns < min_n:
                    r["status"] = STATUS_INSUFFICIENT
                    r["reason"] = "; ".join(notes + [f"{ns} paired queries < min_n {min_n}"])
                    if ns >= 2:
                        r["mde"] = float(mde(r["sd_diff"], ns, alpha, power))
                    rows.append(r)
                    continue
                r["mde"] = float(mde(r["sd_diff"], ns, alpha, power))
                if np.ptp(x) == 0:
                    r["status"] = STATUS_ZERO_VAR
                    r["reason"] = "; ".join(
                        notes + [f"per-query difference is constant ({x[0]:.6g}) over {ns} queries"]
                    )
                    r["delta"] = float(x[0])
                    r["sd_diff"] = 0.0
                    r["mde"] = 0.0
                col = np.where(member, diffs[:, mi], 0.0)
                col_blocks.append(col)
                col_meta.append((gi, sc, mi))
                pending.append(r)
                rows.append(r)

    if pending:
        cols = np.ascontiguousarray(np.stack(col_blocks, axis=1))  # n × K
        # p-values: one sign matrix for the whole family.
        exceed = _signflip_exceed(cols, b_perm, _rng(seed, _STREAM_SIGNS))
        pvals = (exceed + 1.0) / (b_perm + 1.0)
        # CIs: one stratified count matrix per slice dimension, shared by its columns.
        meta = np.array(col_meta)
        lo = np.empty(len(pending))
        hi = np.empty(len(pending))
        for gi, (_, codes, _) in enumerate(groups):
            sel = np.flatnonzero(meta[:, 0] == gi)
            if sel.size == 0:
                continue
            sums = _stratified_boot_sums(cols[:, sel], codes, b_ci, _rng(seed, _STREAM_BOOT, gi))
            ns = np.array([pending[j]["n"] for j in sel], dtype=np.float64)
            l_, h_ = percentile_ci((sums / ns[None, :]).T, alpha)
            lo[sel], hi[sel] = l_, h_
        for j, r in enumerate(pending):
            if r["status"] == STATUS_ZERO_VAR:
                r["ci_low"] = r["ci_high"] = r["delta"]
                r["p_value"] = 1.0 if r["delta"] == 0 else float(pvals[j])
            else:
                r["ci_low"], r["ci_high"], r["p_value"] = float(lo[j]), float(hi[j]), float(pvals[j])
    for r, canon in alias_rows:
        src = by_slice[(canon, r["metric"])]
        r.update({k: src[k] for k in ("delta", "ci_low", "ci_high", "p_value", "n", "sd_diff", "mde", "status")})
        r["reason"] = "; ".join(
            [x for x in (src["reason"],) if x] + [f"alias of slice {canon!r} (the same queries): not a separate test"]
        )
        r["_alias_of"] = src
    return _finish(rows)


def _finish(rows: list[dict]) -> pl.DataFrame:
    """Holm over the rows with a p-value, aliases (`_alias_of`: a slice with the same queries
    as an earlier one) left out of the family and given their first slice's p_holm."""
    p = np.array([np.nan if r["p_value"] is None or "_alias_of" in r else r["p_value"] for r in rows])
    adj = holm(p)
    for r, a in zip(rows, adj):
        r["p_holm"] = None if np.isnan(a) else float(a)
    for r in rows:
        src = r.pop("_alias_of", None)
        if src is not None:
            r["p_holm"] = src["p_holm"]
    for r in rows:
        ne, m = r["needed_effect"], r["mde"]
        if ne is not None:
            r["needed_effect"] = float(ne)
            if m is not None and not math.isnan(m):
                r["power_ok"] = bool(m <= ne)
        if r["mde"] is not None and math.isnan(r["mde"]):
            r["mde"] = None
    if not rows:
        return _empty_frame()
    return pl.DataFrame(rows, schema=OUTPUT_SCHEMA)


def compare_many(
    per_query: pl.DataFrame, pairs: Sequence[tuple[str, str]], metrics: Sequence[str], base_seed: int = 0, **kwargs
) -> pl.DataFrame:
    """Several decisions, concatenated. Each (control, test) pair is its own Holm family and
    gets its own seed, `decision_seed(base_seed, control, test)`, recorded in `seed`."""
    if "seed" in kwargs:
        raise TypeError("compare_many: pass base_seed; per-decision seeds are derived from it")
    frames = [compare(per_query, c, t, metrics, seed=decision_seed(base_seed, c, t), **kwargs) for c, t in pairs]
    return pl.concat(frames, how="vertical") if frames else _empty_frame()
