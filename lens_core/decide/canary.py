"""The canary ladder with tripwire (SPEC §9). Pure: data in, tables out (no dagster).

Routing
-------
A query goes to the test arm at step `pct` when `repo_bucket(repo) < pct`, with
`repo_bucket(repo) = int.from_bytes(sha256(repo as UTF-8)[:8], "big") mod 100` (big-endian
first 8 bytes of the digest: stable across processes, machines and Python versions, unlike
`hash()`). Buckets nest: a repo in the 5% arm stays in the test arm at 25%, 50% and 100%.

Input (`CanaryStream`)
----------------------
`queries`: one row per (qid, arm) with `arm` in {control, test} and columns

    qid, repo, arm, sla_recall_50, lat_ms, confidence, calib_ms  [, ts]

Both arms answered every query (shadow pairs from the engine or the simulator): each qid has
exactly one control and one test row with the same repo. `confidence` is the mean calibrated
confidence of the query's hits; `calib_ms` the time the arm's calibrator took to score the
query's hits; `ts` (epoch ms or a Datetime) is needed only for time windows. Stream order is
`ts` when present, else the order in which qids first appear.
`labels`: labelled hits for the adaptive ECE, columns `qid, arm, confidence, label` (0/1);
may be empty (then every window's ECE is `insufficient`), never None. `aa_queries` /
`aa_labels`: the A/A stream, same shape, both arms running the *same* config.

Windows
-------
Count windows (default): consecutive blocks of `window_queries` (200) queries of the stream.
Time windows: `window_minutes` (15 in production) of `ts` from the stream's first query.
Per-step replay (`window_sizing: per_step`, count windows; issue 17): the embedded default
replays shadow pairs of one suite, so a single pass cut into fixed windows leaves the 5% step
with a handful of test-routed queries per window (`insufficient`, the ladder never moves).
Instead every step replays the whole suite (in an order seeded by the step), cut into windows
sized from the A/A noise floor: a window needs n = ((aa_z + z_power)·sd_q / aa_sla_margin)²
test-routed queries (`window_test_queries`: an SLA-Recall@50 drop of one margin turns it red
with probability `window_power`), so at a step routing share s of the queries the window is
n / s queries, at least `window_queries` and at most suite / windows_per_step
(`step_window_queries`), so every step reaches its windows within its replay. The size used
is in `steps.window_queries`; where the cap binds, the window's tolerance (which scales with
1/√n_test) is wider and its row shows n_test.
The last, possibly incomplete window is not judged (a time stream's last window is always
dropped: nothing says it is complete). Windows are judged at the step's pct: the test-routed
queries (bucket < pct) are `n_test`, the others `n_control`.

Window gates (SPEC §9), all on the test-routed queries of the window
---------------------------------------------------------------------
* `calib_p99`: p99 of the test arm's `calib_ms` < 1 ms (strict).
* `ece`: adaptive ECE (`lens_core.calibrate.calibration.adaptive_ece`, 10 equal-mass bins) of the test
  arm's labelled hits <= 0.01. Judged with its noise floor: the 0.95 quantile of the adaptive
  ECE that a perfectly calibrated window shows by chance, resampling the window's *queries*
  (a query's hits are correlated: `query_null_ece_distribution`, centred per-bin gaps, 400
  draws, seeded; issue 17; `adaptive_ece_noise_floor` is the older hit-level binomial
  reference, kept for comparison). When the floor exceeds the gate
  (too few labels: ~14,000 at a typical confidence distribution for 0.01), or there are no
  labels, the status is `insufficient`: reported, not red, not green evidence either.
* `conf_shift`: paired mean of (test − control) confidence; passes when |shift| <= 0.02
  (a shift either way moves what users see; SPEC's `<= 0.02` on the absolute value).
* `sla_recall_delta`: paired point estimate mean(test − control SLA-Recall@50); passes when
  `delta >= sla_delta_min − tol` with `tol = z · sd_q / √n_test`, `sd_q` the per-query noise
  from the A/A canary (see below; `sla_tolerance: none` makes tol = 0). The point estimate is
  used rather than a CI bound: at 5% a window holds a handful of test queries, and a CI lower
  bound >= 0 would turn every small window red; the A/A tolerance is the noise allowance.

Pairing: both arms' rows of the *same* test-routed queries are compared (paired, as
SPEC §5), so the delta is not confounded by which repos a bucket happens to hold.

A window with fewer than `min_test_queries` (5) test-routed queries is `insufficient` for
the calib/conf/SLA gates. Window status: `red` if any gate failed; `green` if none failed and
calib/conf/SLA were judged (ECE may be insufficient); otherwise `insufficient`.

A/A first
---------
The A/A stream is judged at `aa_pct` (100) with the same gates. Its noise floor:
`sla_window_sd` (sd of the A/A windows' SLA deltas), `sla_sd_pooled` (sd of all A/A
per-query differences) and `sd_q = max(sla_sd_pooled, sla_window_sd · √mean n_test)` (the
window spread expressed per query, so it also covers between-window drift); `tol` above scales
it to each window's size.

The A/A verdict is an equivalence test (issue 17), not a point-null test: with enough queries
any tiny systematic difference is "significant", while what the ladder needs is that the two
arms of one configuration agree *within the margins the gates judge*. Every canary gate metric
with a paired per-query value is tested with two one-sided paired t-tests (TOST,
`lens_core.stats.compare.tost_paired`) on the pooled A/A per-query differences against its
gate's margin, at `aa_alpha` (0.05):

| metric | gate | margin |
| --- | --- | --- |
| `sla_recall_50` | `sla_recall_delta` | `aa_sla_margin` (0.05) |
| `confidence` | `conf_shift` | `conf_shift_max` (0.02) |
| `calib_ms` | `calib_p99` | `aa_calib_margin_ms` (0.25 ms) |

A margin can only be shown when the suite is large enough: at 80% power and true Δ = 0,
TOST needs margin >= (z_{1-α} + z_{0.9}) · sd/√n; the reason states that smallest showable margin
for a metric that is not shown equivalent. The SLA-Recall@50 margin (0.05) is sized so: the
A/A per-query sd of SLA-Recall@50 is ~0.33 on the simulator, so 1,200 paired queries show ±0.05
with > 99% power (±0.02 would be showable only half the time: a false alarm every other week).
(The ECE gate judges one arm's labelled hits against the labels, not a paired per-query
difference; it enters the A/A through the red-window rule below.) The A/A is *broken* (the
setup is broken; the ladder does not start, decision `hold`, final pct 0) when any metric is
not shown equivalent (`max(p_lower, p_upper) >= aa_alpha`; "significantly beyond the margin"
when the complementary one-sided test rejects too), or when it has two consecutive red windows.
The decision's reason gives, per metric, Δ, the margin and both one-sided p-values. At least
`aa_min_windows` (2) judged A/A windows are required (ValueError otherwise).

Ladder and tripwire
-------------------
Steps 5 → 25 → 50 → 100 (`ladder`). At each step windows are judged in stream order:
* red: with the previous judged window of this step also red (insufficient windows neither
  break nor extend a run), the test arm is reverted to 0% (`revert`; the `page(summary,
  details)` callback is called once; the rest of the stream is not used); else `hold`.
* green: after `windows_per_step` (2) green windows at the step -> `advance` (or `complete`
  at the last step).
* insufficient: `hold` (the step waits for traffic).
If the stream ends first: `hold` with reason "stream exhausted", final pct = the current step.

Output (`CanaryResult`): `steps`, `windows`, `decisions` DataFrames with the columns of
`STEPS_SCHEMA`, `WINDOWS_SCHEMA`, `DECISIONS_SCHEMA`; `final_pct`, `reverted`, `completed`,
`aa_passed`, `noise_floor` (dict). Phase `aa` rows have step 0; A/B steps are 1..len(ladder).
Window ids count per phase from 0.

Why this is one module: the ladder, its window judgement and its config are one decision procedure (SPEC §9); each rule reads the others' state.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from statistics import NormalDist
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl

from lens_core.calibrate.calibration import adaptive_ece, clustered_noise_floor
from lens_core.common.settings import load_config
from lens_core.stats.compare import tost_paired

ARM_CONTROL, ARM_TEST = "control", "test"
ARMS = (ARM_CONTROL, ARM_TEST)
PHASE_AA, PHASE_AB = "aa", "ab"
ADVANCE, HOLD, REVERT, COMPLETE = "advance", "hold", "revert", "complete"
RED, GREEN, INSUFFICIENT = "red", "green", "insufficient"
GATE_PASS, GATE_FAIL = "pass", "fail"

QUERY_COLUMNS: tuple[str, ...] = ("qid", "repo", "arm", "sla_recall_50", "lat_ms", "confidence", "calib_ms")
METRIC_COLUMNS: tuple[str, ...] = ("sla_recall_50", "lat_ms", "confidence", "calib_ms")
LABEL_COLUMNS: tuple[str, ...] = ("qid", "arm", "confidence", "label")

STEPS_SCHEMA: dict[str, pl.DataType] = {
    "phase": pl.String,
    "step": pl.Int64,
    "pct": pl.Int64,
    "start_window": pl.Int64,
    "end_window": pl.Int64,
    "windows": pl.Int64,
    "green_windows": pl.Int64,
    "red_windows": pl.Int64,
    "decision": pl.String,
    "reason": pl.String,
    "window_queries": pl.Int64,
}
WINDOWS_SCHEMA: dict[str, pl.DataType] = {
    "phase": pl.String,
    "step": pl.Int64,
    "pct": pl.Int64,
    "window": pl.Int64,
    "start": pl.Int64,
    "end": pl.Int64,
    "n_control": pl.Int64,
    "n_test": pl.Int64,
    "calib_p99_ms": pl.Float64,
    "calib_p99_threshold": pl.Float64,
    "calib_p99_passed": pl.Boolean,
    "ece": pl.Float64,
    "ece_threshold": pl.Float64,
    "ece_noise_floor": pl.Float64,
    "ece_labels": pl.Int64,
    "ece_status": pl.String,
    "ece_passed": pl.Boolean,
    "conf_shift": pl.Float64,
    "conf_shift_threshold": pl.Float64,
    "conf_shift_passed": pl.Boolean,
    "sla_recall_delta": pl.Float64,
    "sla_recall_threshold": pl.Float64,
    "sla_recall_passed": pl.Boolean,
    "lat_p99_control": pl.Float64,
    "lat_p99_test": pl.Float64,
    "red": pl.Boolean,
    "status": pl.String,
    "reason": pl.String,
}
DECISIONS_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64,
    "phase": pl.String,
    "step": pl.Int64,
    "window": pl.Int64,
    "at": pl.Int64,
    "action": pl.String,
    "from_pct": pl.Int64,
    "to_pct": pl.Int64,
    "reason": pl.String,
    "paged": pl.Boolean,
}


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryConfig:
    ladder: tuple[int, ...] = (5, 25, 50, 100)
    aa_pct: int = 100
    window_queries: int = 200
    window_minutes: float | None = None
    windows_per_step: int = 2
    red_windows_to_revert: int = 2
    min_test_queries: int = 5
    calib_p99_ms: float = 1.0
    ece_max: float = 0.01
    ece_bins: int = 10
    ece_noise_q: float = 0.95
    ece_noise_reps: int = 400
    conf_shift_max: float = 0.02
    sla_delta_min: float = 0.0
    sla_tolerance: str = "aa"  # aa | none
    aa_z: float = 1.96
    aa_min_windows: int = 2
    aa_alpha: float = 0.05
    aa_perm_b: int = 10_000  # unused since issue 17 (the A/A is a TOST); kept so old configs load
    aa_sla_margin: float = 0.05
    aa_calib_margin_ms: float = 0.25
    aa_ndcg_margin: float = 0.05
    # `fixed`: one pass over the stream in `window_queries` windows for the whole ladder.
    # `per_step` (count windows only): the replay of shadow pairs re-plays the suite at every
    # step, in a step-specific order, with windows sized from the A/A noise floor (issue 17;
    # see `step_window_queries`).
    window_sizing: str = "fixed"
    window_power: float = 0.8
    seed: int = 20260104

    def __post_init__(self) -> None:
        lad = tuple(int(p) for p in self.ladder)
        object.__setattr__(self, "ladder", lad)
        if not lad or any(not 0 < p <= 100 for p in lad) or list(lad) != sorted(set(lad)):
            raise ValueError(f"canary ladder {lad}: expected strictly increasing percentages in (0, 100]")
        if not 0 < int(self.aa_pct) <= 100:
            raise ValueError(f"canary aa_pct={self.aa_pct}: expected (0, 100]")
        if self.window_minutes is None and self.window_queries < 1:
            raise ValueError(f"canary window_queries={self.window_queries}: expected >= 1")
        if self.window_minutes is not None and not self.window_minutes > 0:
            raise ValueError(f"canary window_minutes={self.window_minutes}: expected > 0")
        for name in ("aa_sla_margin", "aa_calib_margin_ms", "aa_ndcg_margin", "conf_shift_max"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"canary {name}={getattr(self, name)}: expected > 0 (an equivalence margin)")
        if not 0 < float(self.aa_alpha) < 1:
            raise ValueError(f"canary aa_alpha={self.aa_alpha}: expected (0, 1)")
        if self.window_sizing not in ("fixed", "per_step"):
            raise ValueError(f"canary window_sizing={self.window_sizing!r}: expected 'fixed' or 'per_step'")
        if not 0 < float(self.window_power) < 1:
            raise ValueError(f"canary window_power={self.window_power}: expected (0, 1)")
        if self.sla_tolerance not in ("aa", "none"):
            raise ValueError(f"canary sla_tolerance={self.sla_tolerance!r}: expected 'aa' or 'none'")
        for name in (
            "windows_per_step",
            "red_windows_to_revert",
            "min_test_queries",
            "aa_min_windows",
            "ece_bins",
            "ece_noise_reps",
            "aa_perm_b",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"canary {name}={getattr(self, name)}: expected >= 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "CanaryConfig":
        """From a YAML mapping (e.g. the `canary:` block of the config); unknown keys are errors."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"canary config: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "ladder" in data:
            data["ladder"] = tuple(data["ladder"])
        return cls(**data)


def canary_config() -> CanaryConfig:
    """The `canary:` block of the Lens config (defaults when absent)."""

    return CanaryConfig.from_mapping(load_config().canary.model_dump(exclude_unset=True))


def aa_margins(cfg: CanaryConfig) -> dict[str, float]:
    """Equivalence margin per metric for the A/A TOST: each canary gate's margin (issue 17).
    `ndcg_10` is not a canary gate; its margin serves the hero decision's A/A check."""
    return {
        "sla_recall_50": float(cfg.aa_sla_margin),
        "confidence": float(cfg.conf_shift_max),
        "calib_ms": float(cfg.aa_calib_margin_ms),
        "ndcg_10": float(cfg.aa_ndcg_margin),
    }


AA_METRICS: tuple[str, ...] = ("sla_recall_50", "confidence", "calib_ms")  # paired canary gate metrics
AA_METRIC_LABELS = {
    "sla_recall_50": "SLA-Recall@50",
    "confidence": "confidence",
    "calib_ms": "calibrator ms",
    "ndcg_10": "nDCG@10",
}


@dataclass(frozen=True)
class AAVerdict:
    """The A/A equivalence verdict (TOST per metric). `rows`: one dict per metric with
    metric, n, delta, sd, margin, p_lower, p_upper, p_tost, equivalent, beyond."""

    equivalent: bool
    rows: tuple[dict[str, Any], ...]
    alpha: float
    reason: str


def aa_equivalence(diffs: Mapping[str, np.ndarray], margins: Mapping[str, float], alpha: float) -> AAVerdict:
    """TOST of each metric's paired per-query A/A differences (twin − control) against its
    margin at `alpha`. Equivalent when every metric is; the reason names, per metric, Δ, the
    margin and both one-sided p-values, and which metrics are not shown equivalent or are
    significantly beyond their margin."""
    rows = []
    for metric, d in diffs.items():
        d = np.asarray(d, dtype=np.float64).ravel()
        if d.size < 2:
            raise ValueError(f"A/A equivalence: {metric}: {d.size} paired queries, need >= 2")
        r = tost_paired(d, margins[metric], alpha)
        rows.append(
            {
                "metric": metric,
                "n": int(d.size),
                "delta": float(r["delta"][0]),
                "sd": float(r["sd"][0]),
                "margin": float(r["margin"][0]),
                "p_lower": float(r["p_lower"][0]),
                "p_upper": float(r["p_upper"][0]),
                "p_tost": float(r["p_tost"][0]),
                "equivalent": bool(r["equivalent"][0]),
                "beyond": bool(r["beyond"][0]),
            }
        )
    parts = []
    z = float(NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(0.9))
    for r in rows:
        word = "equivalent" if r["equivalent"] else ("BEYOND the margin" if r["beyond"] else "NOT shown equivalent")
        r["showable_margin"] = z * r["sd"] / math.sqrt(r["n"])
        need = "" if r["equivalent"] else f"; smallest margin showable at this n: ±{r['showable_margin']:.3g}"
        parts.append(
            f"{AA_METRIC_LABELS.get(r['metric'], r['metric'])} Δ {r['delta']:+.4g} within ±{r['margin']:g}: {word} "
            f"(p_lower {r['p_lower']:.3g}, p_upper {r['p_upper']:.3g}, n {r['n']}{need})"
        )
    ok = all(r["equivalent"] for r in rows)
    head = "A/A equivalent" if ok else "A/A not equivalent"
    return AAVerdict(ok, tuple(rows), float(alpha), f"{head} (TOST, α {alpha:g}): " + "; ".join(parts))


def aa_equivalence_per_query(
    per_query: pl.DataFrame, control: str, twin: str, cfg: CanaryConfig | None = None
) -> AAVerdict:
    """The hero decision's A/A check (issue 17): TOST of the A/A pair's paired per-query
    differences (twin − control, joined on qid) of the metrics of `aa_margins` that the
    per-query table has (SLA-Recall@50, the canary SLA gate's metric, and nDCG@10, the heroes'
    metric), against their margins at `aa_alpha`."""
    cfg = cfg or canary_config()
    margins = aa_margins(cfg)
    metrics = [m for m in margins if m in per_query.columns]
    if not metrics:
        raise ValueError(f"A/A equivalence: per_query has none of {', '.join(margins)}")
    c = per_query.filter(pl.col("system") == control).select("qid", *metrics)
    t = per_query.filter(pl.col("system") == twin).select("qid", *metrics)
    j = c.join(t, on="qid", how="inner", suffix="__t").sort("qid")
    if j.height < 2:
        raise ValueError(f"A/A equivalence: {j.height} paired queries of {control!r} and {twin!r}, need >= 2")
    diffs = {m: (j[f"{m}__t"].cast(pl.Float64) - j[m].cast(pl.Float64)).to_numpy() for m in metrics}
    return aa_equivalence(diffs, margins, cfg.aa_alpha)


# ---------------------------------------------------------------------------------------------
# Bucketing
# ---------------------------------------------------------------------------------------------
def repo_bucket(repo: str) -> int:
    """sha256(repo)[:8] as a big-endian integer, mod 100."""
    return int.from_bytes(hashlib.sha256(str(repo).encode("utf-8")).digest()[:8], "big") % 100


def repo_buckets(repos) -> np.ndarray:
    """`repo_bucket` of every element (each distinct repo is hashed once)."""
    s = (
        repos.cast(pl.String).rename("repo")
        if isinstance(repos, pl.Series)
        else pl.Series("repo", list(repos), dtype=pl.String)
    )
    if s.null_count():
        raise ValueError("repo_buckets: null repo")
    uniq = s.unique(maintain_order=True)
    table = pl.DataFrame(
        {"repo": uniq, "bucket": [repo_bucket(r) for r in uniq.to_list()]},
        schema={"repo": pl.String, "bucket": pl.Int64},
    )
    return s.to_frame().join(table, on="repo", how="left", maintain_order="left")["bucket"].to_numpy()


def routed_to_test(repos, pct: float) -> np.ndarray:
    """Boolean mask: the query goes to the test arm at `pct` percent."""
    return repo_buckets(repos) < pct


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryStream:
    queries: pl.DataFrame
    labels: pl.DataFrame
    aa_queries: pl.DataFrame
    aa_labels: pl.DataFrame


@dataclass
class _Prepared:
    """One stream as paired, windowed numpy arrays (sorted by window)."""

    window: np.ndarray  # window id per query
    bucket: np.ndarray
    c: dict[str, np.ndarray]  # control metrics per query
    t: dict[str, np.ndarray]  # test metrics per query
    bounds: list[tuple[int, int, int, int, int]]  # (window, lo, hi, start, end) per judged window
    lab_window: np.ndarray  # labelled test hits: window, bucket, conf, label (sorted by window)
    lab_bucket: np.ndarray
    lab_conf: np.ndarray
    lab_label: np.ndarray
    lab_qid: np.ndarray  # query code per labelled hit: the ECE floor resamples queries
    lab_offsets: dict[int, tuple[int, int]]


def _need(df: pl.DataFrame, cols: Sequence[str], what: str) -> None:
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"{what}: expected a polars DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)} (have {', '.join(df.columns)})")


def _finite(df: pl.DataFrame, cols: Sequence[str], what: str) -> None:
    for col in cols:
        s = df[col].cast(pl.Float64, strict=False)
        bad = s.is_null() | ~s.is_finite()
        if bad.any():
            qids = df.filter(bad)["qid"].head(3).to_list() if "qid" in df.columns else []
            raise ValueError(
                f"{what}: column {col}: {int(bad.sum())} null or non-finite value(s), "
                f"e.g. qid {', '.join(map(str, qids))}"
            )


def _ts_ms(s: pl.Series) -> pl.Series:
    if s.dtype == pl.Datetime or isinstance(s.dtype, pl.Datetime):
        return s.dt.epoch("ms").cast(pl.Int64)
    if s.dtype.is_numeric():
        return s.cast(pl.Int64)
    raise ValueError(f"queries: column ts must be epoch ms or a Datetime, got {s.dtype}")


def _prepare(
    queries: pl.DataFrame,
    labels: pl.DataFrame,
    cfg: CanaryConfig,
    what: str,
    window_queries: int | None = None,
    order_key: str | None = None,
) -> _Prepared:
    """`window_queries` overrides the config's count window; `order_key` replays the stream in
    the order of sha256(order_key/qid) instead of the stream order (a per-step replay)."""
    _need(queries, QUERY_COLUMNS, what)
    if labels is None:
        raise ValueError(
            f"{what} labels: required (an empty frame with columns {', '.join(LABEL_COLUMNS)} when there are none)"
        )
    _need(labels, LABEL_COLUMNS, f"{what} labels")
    time_mode = cfg.window_minutes is not None
    if time_mode and "ts" not in queries.columns:
        raise ValueError(f"{what}: window_minutes is set but there is no ts column")
    if queries.height == 0:
        raise ValueError(f"{what}: no queries")
    for col in ("qid", "repo", "arm"):
        n = queries[col].null_count()
        if n:
            raise ValueError(f"{what}: column {col}: {n} null value(s)")
    arms = set(queries["arm"].cast(pl.String).unique().to_list())
    if not arms <= set(ARMS):
        raise ValueError(f"{what}: column arm: unexpected value(s) {sorted(arms - set(ARMS))} (expected control|test)")
    _finite(queries, METRIC_COLUMNS, what)
    q = queries.with_columns(
        pl.col("qid").cast(pl.String), pl.col("repo").cast(pl.String), pl.col("arm").cast(pl.String)
    ).with_row_index("_row")
    dup = q.group_by("qid", "arm").len().filter(pl.col("len") > 1)
    if dup.height:
        raise ValueError(f"{what}: qid {dup['qid'][0]!r} has {dup['len'][0]} rows for arm {dup['arm'][0]}")
    ctl = q.filter(pl.col("arm") == ARM_CONTROL)
    tst = q.filter(pl.col("arm") == ARM_TEST)
    keep = ["_row", "qid", "repo", *METRIC_COLUMNS] + (["ts"] if "ts" in q.columns else [])
    w = ctl.select(keep).join(tst.select(keep), on="qid", how="full", suffix="_t", coalesce=True)
    unpaired = w.filter(pl.col("_row").is_null() | pl.col("_row_t").is_null())
    if unpaired.height:
        qid = unpaired["qid"][0]
        side = ARM_CONTROL if unpaired["_row"][0] is None else ARM_TEST
        raise ValueError(
            f"{what}: qid {qid!r} has no {side} row ({unpaired.height} unpaired qid(s)); every query needs both arms"
        )
    diff_repo = w.filter(pl.col("repo") != pl.col("repo_t"))
    if diff_repo.height:
        raise ValueError(f"{what}: qid {diff_repo['qid'][0]!r}: repo differs between arms")
    if time_mode:
        w = w.with_columns(_ts_ms(w["ts"]).alias("_ts"))
        if w["_ts"].null_count():
            raise ValueError(f"{what}: column ts: null value(s)")
        w = w.sort("_ts", "_row")
        t0 = int(w["_ts"][0])
        width = int(round(cfg.window_minutes * 60_000))
        win = ((w["_ts"].to_numpy() - t0) // width).astype(np.int64)
        # every window before the last (which may be incomplete); a window without traffic
        # is judged too (insufficient)
        judged = list(range(0, int(win.max())))
        starts = {k: t0 + k * width for k in judged}
        ends = {k: t0 + (k + 1) * width for k in judged}
    else:
        wq = int(window_queries or cfg.window_queries)
        if order_key is None:
            w = w.with_columns(pl.min_horizontal("_row", "_row_t").alias("_first")).sort("_first")
        else:
            digest = [hashlib.sha256(f"{order_key}/{q}".encode()).digest()[:8] for q in w["qid"].to_list()]
            w = w.with_columns(pl.Series("_first", [int.from_bytes(d, "big") for d in digest], pl.UInt64)).sort(
                "_first", "qid"
            )
        n = w.height
        win = (np.arange(n) // wq).astype(np.int64)
        judged = list(range(n // wq))
        starts = {k: k * wq for k in judged}
        ends = {k: (k + 1) * wq for k in judged}
    bucket = repo_buckets(w["repo"])
    c = {m: w[m].cast(pl.Float64).to_numpy() for m in METRIC_COLUMNS}
    t = {m: w[f"{m}_t"].cast(pl.Float64).to_numpy() for m in METRIC_COLUMNS}
    lo = np.searchsorted(win, judged, side="left")
    hi = np.searchsorted(win, judged, side="right")
    bounds = [(k, int(a), int(b), starts[k], ends[k]) for k, a, b in zip(judged, lo, hi)]

    # labelled test-arm hits, placed in their query's window
    lab = labels.with_columns(pl.col("qid").cast(pl.String), pl.col("arm").cast(pl.String))
    lab = lab.filter(pl.col("arm") == ARM_TEST)
    if lab.height:
        _finite(lab, ("confidence", "label"), f"{what} labels")
        bad = lab.filter(~pl.col("label").cast(pl.Float64).is_in([0.0, 1.0]))
        if bad.height:
            raise ValueError(f"{what} labels: column label must be 0/1 (qid {bad['qid'][0]!r})")
        conf = lab["confidence"].cast(pl.Float64)
        if ((conf < 0) | (conf > 1)).any():
            raise ValueError(f"{what} labels: column confidence must lie in [0, 1]")
    qwin = pl.DataFrame({"qid": w["qid"], "_win": win, "_bucket": bucket})
    lab = lab.join(qwin, on="qid", how="inner").sort("_win")
    lw = lab["_win"].to_numpy().astype(np.int64) if lab.height else np.zeros(0, np.int64)
    llo = np.searchsorted(lw, judged, side="left")
    lhi = np.searchsorted(lw, judged, side="right")
    return _Prepared(
        window=win,
        bucket=bucket,
        c=c,
        t=t,
        bounds=bounds,
        lab_window=lw,
        lab_bucket=lab["_bucket"].to_numpy() if lab.height else np.zeros(0, np.int64),
        lab_conf=lab["confidence"].cast(pl.Float64).to_numpy() if lab.height else np.zeros(0),
        lab_label=lab["label"].cast(pl.Float64).to_numpy() if lab.height else np.zeros(0),
        lab_qid=lab["qid"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
        if lab.height
        else np.zeros(0, np.int64),
        lab_offsets={k: (int(a), int(b)) for k, a, b in zip(judged, llo, lhi)},
    )


# ---------------------------------------------------------------------------------------------
# Window judgement
# ---------------------------------------------------------------------------------------------
def _p99(x: np.ndarray) -> float | None:
    return float(np.quantile(x, 0.99)) if x.size else None


def _judge_window(
    p: _Prepared, b: tuple, pct: int, cfg: CanaryConfig, sd_q: float, phase: str, step: int
) -> dict[str, Any]:
    k, lo, hi, start, end = b
    test = p.bucket[lo:hi] < pct
    n_test = int(test.sum())
    n_control = int((hi - lo) - n_test)
    ct = {m: v[lo:hi][test] for m, v in p.c.items()}
    tt = {m: v[lo:hi][test] for m, v in p.t.items()}
    row: dict[str, Any] = {
        "phase": phase,
        "step": step,
        "pct": pct,
        "window": k,
        "start": int(start),
        "end": int(end),
        "n_control": n_control,
        "n_test": n_test,
        "calib_p99_threshold": cfg.calib_p99_ms,
        "ece_threshold": cfg.ece_max,
        "conf_shift_threshold": cfg.conf_shift_max,
        "lat_p99_control": _p99(ct["lat_ms"]),
        "lat_p99_test": _p99(tt["lat_ms"]),
    }
    reasons: list[str] = []
    enough = n_test >= cfg.min_test_queries
    if enough:
        p99 = _p99(tt["calib_ms"])
        shift = float(np.mean(tt["confidence"] - ct["confidence"]))
        delta = float(np.mean(tt["sla_recall_50"] - ct["sla_recall_50"]))
        tol = cfg.aa_z * sd_q / math.sqrt(n_test) if cfg.sla_tolerance == "aa" else 0.0
        thr = cfg.sla_delta_min - tol
        row.update(
            calib_p99_ms=p99,
            calib_p99_passed=p99 < cfg.calib_p99_ms,
            conf_shift=shift,
            conf_shift_passed=abs(shift) <= cfg.conf_shift_max,
            sla_recall_delta=delta,
            sla_recall_threshold=thr,
            sla_recall_passed=delta >= thr,
        )
        if not row["calib_p99_passed"]:
            reasons.append(f"calibrator p99 {p99:.3f} ms >= {cfg.calib_p99_ms} ms")
        if not row["conf_shift_passed"]:
            reasons.append(f"confidence shift {shift:+.4f} beyond ±{cfg.conf_shift_max}")
        if not row["sla_recall_passed"]:
            reasons.append(f"SLA-Recall@50 Δ {delta:+.4f} < {thr:+.4f}")
    else:
        row.update(
            calib_p99_ms=None,
            calib_p99_passed=None,
            conf_shift=None,
            conf_shift_passed=None,
            sla_recall_delta=None,
            sla_recall_threshold=None,
            sla_recall_passed=None,
        )
        reasons.append(f"{n_test} test-routed queries < {cfg.min_test_queries}")
    # adaptive ECE of the test arm's labelled hits of test-routed queries
    a, z = p.lab_offsets[k]
    sel = p.lab_bucket[a:z] < pct
    conf, lab = p.lab_conf[a:z][sel], p.lab_label[a:z][sel]
    row["ece_labels"] = int(conf.size)
    if conf.size == 0:
        row.update(ece=None, ece_noise_floor=None, ece_status=INSUFFICIENT, ece_passed=None)
    else:
        seed = cfg.seed * 1009 + (0 if phase == PHASE_AA else 500_000) + k  # fixed per window
        # the floor resamples the window's QUERIES (a query's hits are correlated; issue 17)
        floor, _ = clustered_noise_floor(
            conf, lab, p.lab_qid[a:z][sel], cfg.ece_bins, cfg.ece_noise_reps, seed, cfg.ece_noise_q, adaptive=True
        )
        val = adaptive_ece(conf, lab, bins=cfg.ece_bins)
        if floor > cfg.ece_max:
            row.update(ece=val, ece_noise_floor=floor, ece_status=INSUFFICIENT, ece_passed=None)
        else:
            ok = val <= cfg.ece_max
            row.update(ece=val, ece_noise_floor=floor, ece_status=GATE_PASS if ok else GATE_FAIL, ece_passed=ok)
            if not ok:
                reasons.append(f"adaptive ECE {val:.4f} > {cfg.ece_max}")
    gates = (row["calib_p99_passed"], row["conf_shift_passed"], row["sla_recall_passed"], row["ece_passed"])
    red = any(g is False for g in gates)
    status = RED if red else (GREEN if enough else INSUFFICIENT)
    row.update(red=red, status=status, reason="; ".join(reasons) if (red or not enough) else "all gates pass")
    return row


# ---------------------------------------------------------------------------------------------
# The ladder
# ---------------------------------------------------------------------------------------------
@dataclass
class CanaryResult:
    steps: pl.DataFrame
    windows: pl.DataFrame
    decisions: pl.DataFrame
    final_pct: int
    reverted: bool
    completed: bool
    aa_passed: bool
    noise_floor: dict[str, Any] = field(default_factory=dict)


class _Recorder:
    def __init__(self) -> None:
        self.windows: list[dict] = []
        self.decisions: list[dict] = []
        self.steps: list[dict] = []

    def decide(
        self,
        phase: str,
        step: int,
        window: int | None,
        at: int | None,
        action: str,
        from_pct: int,
        to_pct: int,
        reason: str,
        paged: bool = False,
    ) -> None:
        self.decisions.append(
            {
                "seq": len(self.decisions),
                "phase": phase,
                "step": step,
                "window": window,
                "at": at,
                "action": action,
                "from_pct": from_pct,
                "to_pct": to_pct,
                "reason": reason,
                "paged": paged,
            }
        )

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        return (
            pl.DataFrame(self.steps, schema=STEPS_SCHEMA) if self.steps else pl.DataFrame(schema=STEPS_SCHEMA),
            pl.DataFrame(self.windows, schema=WINDOWS_SCHEMA) if self.windows else pl.DataFrame(schema=WINDOWS_SCHEMA),
            pl.DataFrame(self.decisions, schema=DECISIONS_SCHEMA)
            if self.decisions
            else pl.DataFrame(schema=DECISIONS_SCHEMA),
        )


def window_test_queries(sd_q: float, cfg: CanaryConfig) -> int:
    """Test-routed queries a window needs so that an SLA-Recall@50 drop of one A/A margin
    (`aa_sla_margin`) turns it red with probability `window_power`: the window's tolerance is
    z·sd_q/√n, so n >= ((z + z_power)·sd_q / margin)², at least `min_test_queries`."""
    z_pow = NormalDist().inv_cdf(float(cfg.window_power))
    n = math.ceil(((float(cfg.aa_z) + z_pow) * float(sd_q) / float(cfg.aa_sla_margin)) ** 2)
    return max(int(cfg.min_test_queries), n)


def step_window_queries(share: float, n_needed: int, n_stream: int, cfg: CanaryConfig) -> int:
    """Window size (queries of the replayed stream) at a step that routes `share` of the
    queries to the test arm: enough for `n_needed` test-routed queries per window, at least
    `window_queries`, and at most n_stream / windows_per_step (so the step can reach its
    green windows within one replay of the suite; a window then sees fewer test queries than
    needed and judges with a wider tolerance, which its row shows)."""
    want = math.ceil(n_needed / share) if share > 0 else n_stream
    cap = max(1, n_stream // int(cfg.windows_per_step))
    return int(min(max(want, int(cfg.window_queries)), cap))


def _step_row(
    phase, step, pct, rows: list[dict], decision: str, reason: str, window_queries: int | None = None
) -> dict:
    return {
        "window_queries": window_queries,
        "phase": phase,
        "step": step,
        "pct": pct,
        "start_window": rows[0]["window"] if rows else None,
        "end_window": rows[-1]["window"] if rows else None,
        "windows": len(rows),
        "green_windows": sum(r["status"] == GREEN for r in rows),
        "red_windows": sum(r["status"] == RED for r in rows),
        "decision": decision,
        "reason": reason,
    }


def _run_aa(p: _Prepared, cfg: CanaryConfig, rec: _Recorder) -> tuple[bool, float, dict[str, Any]]:
    pct = cfg.aa_pct
    # pass 1: window deltas and per-query differences -> the noise floor
    deltas, ns, diffs_sla, diffs_conf = [], [], [], []
    for k, lo, hi, _, _ in p.bounds:
        test = p.bucket[lo:hi] < pct
        if int(test.sum()) < cfg.min_test_queries:
            continue
        d = p.t["sla_recall_50"][lo:hi][test] - p.c["sla_recall_50"][lo:hi][test]
        deltas.append(float(d.mean()))
        ns.append(d.size)
        diffs_sla.append(d)
        diffs_conf.append(p.t["confidence"][lo:hi][test] - p.c["confidence"][lo:hi][test])
    if len(deltas) < cfg.aa_min_windows:
        raise ValueError(
            f"A/A canary: {len(deltas)} judged window(s) (>= {cfg.min_test_queries} test-routed "
            f"queries at {pct}%), need >= {cfg.aa_min_windows}: give the A/A stream more queries"
        )
    all_sla = np.concatenate(diffs_sla)
    all_conf = np.concatenate(diffs_conf)
    window_sd = float(np.std(deltas, ddof=1))
    pooled_sd = float(np.std(all_sla, ddof=1)) if all_sla.size > 1 else 0.0
    sd_q = max(pooled_sd, window_sd * math.sqrt(float(np.mean(ns))))
    # the A/A verdict: TOST of every paired canary gate metric against its gate's margin
    judged = np.concatenate([np.flatnonzero(p.bucket[lo:hi] < pct) + lo for _, lo, hi, _, _ in p.bounds])
    margins = aa_margins(cfg)
    verdict = aa_equivalence(
        {m: p.t[m][judged] - p.c[m][judged] for m in AA_METRICS if m in p.t}, margins, cfg.aa_alpha
    )
    noise = {
        "aa_windows": len(deltas),
        "aa_queries": int(all_sla.size),
        "sla_window_sd": window_sd,
        "sla_sd_pooled": pooled_sd,
        "sd_q": sd_q,
        "sla_mean_delta": float(all_sla.mean()),
        "conf_mean_shift": float(all_conf.mean()),
        "conf_window_sd": float(np.std([x.mean() for x in diffs_conf], ddof=1)),
        "aa_equivalent": verdict.equivalent,
        "aa_alpha": cfg.aa_alpha,
        "aa_tost": {r["metric"]: dict(r) for r in verdict.rows},
        "tolerance": cfg.sla_tolerance,
        "z": cfg.aa_z,
    }
    # pass 2: judge the A/A windows with the floor
    rows, streak, broken = [], 0, None
    for b in p.bounds:
        r = _judge_window(p, b, pct, cfg, sd_q, PHASE_AA, 0)
        rows.append(r)
        rec.windows.append(r)
        if r["status"] == RED:
            streak += 1
            if streak >= cfg.red_windows_to_revert and broken is None:
                broken = f"A/A had {streak} consecutive red windows (ending at window {r['window']}): {r['reason']}"
        elif r["status"] == GREEN:
            streak = 0
    if broken is None and not verdict.equivalent:
        broken = f"{verdict.reason}: the setup is broken"
    elif broken is not None:
        broken = f"{broken}; {verdict.reason}"
    last = rows[-1] if rows else None
    floor_txt = (
        f"noise floor: sd_q {sd_q:.4f} (window sd {window_sd:.4f}, pooled {pooled_sd:.4f}) over "
        f"{len(deltas)} windows; mean SLA Δ {noise['sla_mean_delta']:+.4f}"
    )
    if broken:
        rec.steps.append(_step_row(PHASE_AA, 0, pct, rows, HOLD, broken, cfg.window_queries))
        rec.decide(
            PHASE_AA,
            0,
            last["window"] if last else None,
            last["end"] if last else None,
            HOLD,
            0,
            0,
            f"{broken}; the ladder does not start. {floor_txt}",
        )
        return False, sd_q, noise
    rec.steps.append(_step_row(PHASE_AA, 0, pct, rows, ADVANCE, floor_txt, cfg.window_queries))
    rec.decide(
        PHASE_AA,
        0,
        last["window"] if last else None,
        last["end"] if last else None,
        ADVANCE,
        0,
        cfg.ladder[0],
        f"A/A passed: {verdict.reason}. {floor_txt}",
    )
    return True, sd_q, noise


def run_ladder(
    stream: CanaryStream, config: CanaryConfig | None = None, page: Callable[[str, dict], Any] | None = None
) -> CanaryResult:
    """Run the A/A canary, then the ladder over the A/B stream (see the module docstring)."""
    cfg = config or CanaryConfig()
    if not isinstance(stream, CanaryStream):
        raise ValueError(f"run_ladder: expected a CanaryStream, got {type(stream).__name__}")
    aa = _prepare(stream.aa_queries, stream.aa_labels, cfg, "A/A queries")
    ab = _prepare(stream.queries, stream.labels, cfg, "queries")
    rec = _Recorder()
    aa_ok, sd_q, noise = _run_aa(aa, cfg, rec)
    if not aa_ok:
        return CanaryResult(
            *rec.frames(), final_pct=0, reverted=False, completed=False, aa_passed=False, noise_floor=noise
        )

    per_step = cfg.window_sizing == "per_step" and cfg.window_minutes is None
    n_stream = ab.window.size
    n_needed = window_test_queries(sd_q, cfg)
    noise["window_test_queries_needed"] = n_needed
    sizes: dict[int, int] = {}

    def step_pass(step_i: int, pct: int):
        """(prepared stream, its judged windows) for a step: the one shared pass (`fixed`), or
        the step's own replay with windows sized for its routed share (`per_step`)."""
        if not per_step:
            sizes[step_i] = int(cfg.window_queries)
            return ab, shared
        wq = step_window_queries(float(np.mean(ab.bucket < pct)), n_needed, n_stream, cfg)
        sizes[step_i] = wq
        p = _prepare(stream.queries, stream.labels, cfg, "queries", window_queries=wq, order_key=f"{cfg.seed}/{pct}")
        return p, iter(p.bounds)

    shared = iter(ab.bounds)
    step_i, pct = 0, cfg.ladder[0]
    rows: list[dict] = []
    greens = streak = 0
    reverted = completed = False
    offset = 0  # window ids and positions continue across a per-step replay
    p_step, bounds = step_pass(step_i, pct)
    while True:
        b = next(bounds, None)
        if b is None:
            break
        if per_step:
            k, lo, hi, start, end = b
            r = _judge_window(p_step, b, pct, cfg, sd_q, PHASE_AB, step_i + 1)
            r.update(window=offset + k, start=step_i * n_stream + start, end=step_i * n_stream + end)
        else:
            r = _judge_window(ab, b, pct, cfg, sd_q, PHASE_AB, step_i + 1)
        rec.windows.append(r)
        rows.append(r)
        step = step_i + 1
        if r["status"] == RED:
            streak += 1
            if streak >= cfg.red_windows_to_revert:
                summary = (
                    f"[lens canary] tripwire: {streak} consecutive red windows at {pct}% "
                    f"(step {step}); test arm reverted to 0%"
                )
                details = {
                    "step": step,
                    "pct": pct,
                    "window": r["window"],
                    "red_windows": streak,
                    "reason": r["reason"],
                    "windows": [w["window"] for w in rows[-streak:]],
                }
                paged = False
                if page is not None:
                    try:
                        out = page(summary, details)
                        paged = out is not False
                    except Exception as e:  # the revert stands whatever the pager does
                        details["page_error"] = f"{type(e).__name__}: {e}"
                reason = f"{streak} consecutive red windows: {r['reason']}"
                rec.decide(PHASE_AB, step, r["window"], r["end"], REVERT, pct, 0, reason, paged)
                rec.steps.append(_step_row(PHASE_AB, step, pct, rows, REVERT, reason, sizes.get(step_i)))
                reverted, pct = True, 0
                break
            rec.decide(
                PHASE_AB,
                step,
                r["window"],
                r["end"],
                HOLD,
                pct,
                pct,
                f"red window ({r['reason']}); {cfg.red_windows_to_revert - streak} more consecutive red "
                f"window(s) revert the test arm",
            )
        elif r["status"] == GREEN:
            streak = 0
            greens += 1
            if greens >= cfg.windows_per_step:
                last_step = step_i == len(cfg.ladder) - 1
                if last_step:
                    reason = f"{greens} green windows at {pct}%: ladder complete"
                    rec.decide(PHASE_AB, step, r["window"], r["end"], COMPLETE, pct, pct, reason)
                    rec.steps.append(_step_row(PHASE_AB, step, pct, rows, COMPLETE, reason, sizes.get(step_i)))
                    completed = True
                    break
                nxt = cfg.ladder[step_i + 1]
                reason = f"{greens} green windows at {pct}%"
                rec.decide(PHASE_AB, step, r["window"], r["end"], ADVANCE, pct, nxt, reason)
                rec.steps.append(_step_row(PHASE_AB, step, pct, rows, ADVANCE, reason, sizes.get(step_i)))
                step_i, pct, rows, greens, streak = step_i + 1, nxt, [], 0, 0
                if per_step:
                    offset = r["window"] + 1
                    p_step, bounds = step_pass(step_i, pct)
        else:
            rec.decide(
                PHASE_AB, step_i + 1, r["window"], r["end"], HOLD, pct, pct, f"insufficient evidence: {r['reason']}"
            )
    if not (reverted or completed):
        last = rec.windows[-1] if rows else None
        reason = (
            f"stream exhausted at {pct}% after {len(rows)} window(s) of this step "
            f"({greens}/{cfg.windows_per_step} green)"
            + (f"; windows of {sizes.get(step_i)} queries" if per_step else "")
        )
        rec.decide(
            PHASE_AB,
            step_i + 1,
            last["window"] if last else None,
            last["end"] if last else None,
            HOLD,
            pct,
            pct,
            reason,
        )
        rec.steps.append(_step_row(PHASE_AB, step_i + 1, pct, rows, HOLD, reason, sizes.get(step_i)))
    return CanaryResult(
        *rec.frames(), final_pct=pct, reverted=reverted, completed=completed, aa_passed=True, noise_floor=noise
    )
