"""Monitoring computations behind the SPEC §13 schedules (pure: no Dagster here).

The Dagster layer (`schedules/`) reads stored tables, calls these functions and writes what
they return under `$LENS_DATA_DIR/monitoring/<job>/<date>/` (atomically) and into metadata.

* Time: partitions, ticks and DST live in `lens_core.common.calendar`.
* Micro-suites: `sample_micro_suites` — per suite >= 800 queries (all of them when the suite
  is smaller, reported), stratified by intent x language with largest-remainder allocation,
  seeded by the date and the suite name (same date, same sample; any input row order).
* Regeneration: `regenerate_tables` re-ingests raw runs into agg/hits exactly as the weekly
  chain writes them; `compare_files` compares bytes/sha256 with the stored tables.
* Pool audit: `pool_diff` — per system members added/removed vs the previous week, Jaccard.
* Drift pack: `labelled_hits` + `drift_summary` (ECE, adaptive ECE, debiased ECE, Brier,
  merged-bin share from `lens_core.calibrate.calibration`, clamp rate from the weekly refit against the
  previous week's calibrators) and `history_frame` / `plot_trend` for the trend across weeks.
* Tripwires: `evaluate_tripwires` (file_credit > 5%, flatline via `lens_core.decide.gates`).
* Heroes: `pick_heroes`, `hero_vs_baseline` (paired deltas via `lens_core.stats.compare.compare`).
* Continuous monitors: `hero_health` (published hero table), `emergency_checks` (published
  pointer, attestation and artifact hashes), `Problem` / `reconcile` (page once, resolve
  on recovery, retry when the webhook was down).

Why this is one module: the SPEC §13 monitors (micro-suites, regeneration, pool audit, drift, tripwires, hero and emergency health, paging reconciliation) are small pure functions over the same stored tables; the calendar lives in lens_core.common.calendar.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from lens_core.calibrate import calibration as cal
from lens_core.common.calendar import TZ, previous_week, weekly_partition_for, weekly_start
from lens_core.common.contracts import AGG_SCHEMA, BUNDLE_FILES, PUBLISHED_POINTER, SLICE_ALL
from lens_core.common.hashing import atomic_path, sha256_file
from lens_core.common.tables import write_parquet
from lens_core.decide.gates import file_credit_gate, flatline_gate, gate_config
from lens_core.ingest.ndjson import ingest_to_parquet
from lens_core.measures.metrics import match_pairs, relevant_spans
from lens_core.stats.compare import compare

MICRO_SUITE_SIZE = 800
MICRO_STRATA: tuple[str, ...] = ("intent", "language")
MEMBER_KEYS: tuple[str, ...] = ("qid", "repo", "path", "start_line", "end_line")
DRIFT_METRICS: tuple[str, ...] = ("ece", "adaptive_ece", "debiased_ece", "brier", "clamp_rate", "merged_bin_share")
HERO_METRICS: tuple[str, ...] = ("ndcg_10", "sla_recall_50")
OVERALL = "all"


# ---------------------------------------------------------------------------------------------
# Micro-suite refresh
# ---------------------------------------------------------------------------------------------
def micro_suite_seed(day: str, suite: str) -> int:
    """A 63-bit seed from the date and the suite name (stable across machines)."""
    return int(hashlib.sha256(f"lens-micro-suite|{day}|{suite}".encode()).hexdigest()[:15], 16)


def _largest_remainder(sizes: np.ndarray, n: int) -> np.ndarray:
    """Allocate n among strata proportionally to sizes (Hamilton); never above a stratum size."""
    total = int(sizes.sum())
    if n >= total:
        return sizes.copy()
    quota = sizes * (n / total)
    alloc = np.floor(quota).astype(np.int64)
    rest = n - int(alloc.sum())
    order = np.lexsort((np.arange(sizes.size), -(quota - alloc)))  # biggest remainder first
    for i in order:
        if rest == 0:
            break
        if alloc[i] < sizes[i]:
            alloc[i] += 1
            rest -= 1
    return alloc


def sample_micro_suites(
    queries: pl.DataFrame, day: str, per_suite: int = MICRO_SUITE_SIZE, strata: Sequence[str] = MICRO_STRATA
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Stratified micro-suites: per suite `per_suite` queries (all when the suite has fewer),
    allocated to the strata (intent x language) in proportion to their size, drawn with a
    seed from (`day`, suite). Returns (sample with the queries' columns, report with one row
    per suite x stratum: n_available, n_selected, share_available, share_selected, took_all).
    """
    needed = ["qid", "suite", *strata]
    missing = [c for c in needed if c not in queries.columns]
    if missing:
        raise ValueError(f"micro-suite refresh: query table lacks column(s) {', '.join(missing)}")
    if per_suite < 1:
        raise ValueError("micro-suite refresh: per_suite must be >= 1")
    dup = queries.filter(pl.col("qid").is_duplicated())
    if dup.height:
        raise ValueError(f"micro-suite refresh: qid {dup['qid'][0]!r} appears {dup.height} times")
    date.fromisoformat(day)  # a bad date is an error, not a silent seed
    picked: list[pl.DataFrame] = []
    reports: list[pl.DataFrame] = []
    for (suite,), part in sorted(queries.partition_by("suite", as_dict=True).items()):
        part = part.sort("qid")
        rng = np.random.default_rng(micro_suite_seed(day, str(suite)))
        part = part.with_columns(pl.Series("__key", rng.random(part.height)))
        sizes = part.group_by(list(strata)).len().sort(list(strata))
        alloc = _largest_remainder(sizes["len"].to_numpy().astype(np.int64), per_suite)
        sizes = sizes.with_columns(pl.Series("__alloc", alloc))
        ranked = part.join(sizes.select(*strata, "__alloc"), on=list(strata), how="left").with_columns(
            pl.col("__key").rank("ordinal").over(list(strata)).alias("__rank")
        )
        chosen = ranked.filter(pl.col("__rank") <= pl.col("__alloc"))
        picked.append(chosen.drop("__key", "__alloc", "__rank").sort("qid"))
        took_all = part.height <= per_suite
        reports.append(
            sizes.select(
                pl.lit(str(suite)).alias("suite"),
                *strata,
                pl.col("len").cast(pl.Int64).alias("n_available"),
                pl.col("__alloc").cast(pl.Int64).alias("n_selected"),
                (pl.col("len") / part.height).alias("share_available"),
                (pl.col("__alloc") / max(int(alloc.sum()), 1)).alias("share_selected"),
                pl.lit(took_all).alias("took_all"),
            )
        )
    if not picked:
        raise ValueError("micro-suite refresh: the query table is empty")
    return pl.concat(picked), pl.concat(reports)


def micro_suite_summary(report: pl.DataFrame, per_suite: int = MICRO_SUITE_SIZE) -> pl.DataFrame:
    """One row per suite: available, selected, took_all, note (why fewer than `per_suite`)."""
    s = (
        report.group_by("suite")
        .agg(
            pl.col("n_available").sum(),
            pl.col("n_selected").sum(),
            pl.col("took_all").first(),
            pl.len().alias("strata"),
        )
        .sort("suite")
    )
    return s.with_columns(
        pl.when(pl.col("took_all") & (pl.col("n_available") < per_suite))
        .then(pl.format("suite has only {} queries (< {}): all taken", pl.col("n_available"), pl.lit(per_suite)))
        .otherwise(pl.lit(None))
        .alias("note")
    )


# ---------------------------------------------------------------------------------------------
# Parquet regeneration
# ---------------------------------------------------------------------------------------------
def regenerate_tables(raw_paths: Iterable[str | Path], out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Re-ingest raw runs into agg/hits exactly as the weekly chain stores them (the
    `agg_and_hits` asset: `ingest_to_parquet` writes hits; agg goes polars -> schema guard ->
    zstd Parquet, as the IO manager writes it). Returns {name: {path, sha256, rows}}."""
    out_dir = Path(out_dir)
    agg_t, hits = ingest_to_parquet(list(raw_paths), None, out_dir / "hits.parquet")
    return {
        "agg": write_parquet(pl.from_arrow(agg_t), out_dir / "agg.parquet", schema=AGG_SCHEMA, name="agg"),
        "hits": {"path": str(hits.path), "sha256": hits.sha256, "rows": hits.rows},
    }


def compare_files(stored: Mapping[str, str | Path], regenerated: Mapping[str, Mapping[str, Any]]) -> pl.DataFrame:
    """One row per table: stored/regenerated sha256 and size, identical (same bytes)."""
    rows = []
    for name in sorted(stored):
        sp = Path(stored[name])
        rp = Path(regenerated[name]["path"])
        s_sha = sha256_file(sp) if sp.is_file() else None
        r_sha = sha256_file(rp)
        same = s_sha is not None and s_sha == r_sha and sp.read_bytes() == rp.read_bytes()
        rows.append(
            {
                "table": name,
                "stored_path": str(sp),
                "stored_sha256": s_sha,
                "regenerated_sha256": r_sha,
                "stored_bytes": sp.stat().st_size if sp.is_file() else None,
                "regenerated_bytes": rp.stat().st_size,
                "identical": bool(same),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "table": pl.String,
            "stored_path": pl.String,
            "stored_sha256": pl.String,
            "regenerated_sha256": pl.String,
            "stored_bytes": pl.Int64,
            "regenerated_bytes": pl.Int64,
            "identical": pl.Boolean,
        },
    )


def verify_raw_runs(manifest: pl.DataFrame, root: str | Path) -> list[str]:
    """Raw-run files whose sha256 differs from the weekly manifest (or that are missing)."""
    bad = []
    for rel, sha in manifest.select("path", "sha256").iter_rows():
        p = Path(root) / rel
        if not p.is_file():
            bad.append(f"{rel}: missing")
        elif sha256_file(p) != sha:
            bad.append(f"{rel}: sha256 differs from the manifest")
    return bad


# ---------------------------------------------------------------------------------------------
# Pool audit diff
# ---------------------------------------------------------------------------------------------
def pool_members(pool: pl.DataFrame) -> pl.DataFrame:
    """(system, qid, repo, path, start_line, end_line): one row per system contributing a member."""
    missing = [c for c in (*MEMBER_KEYS, "systems") if c not in pool.columns]
    if missing:
        raise ValueError(f"pool audit: pool table lacks column(s) {', '.join(missing)}")
    return (
        pool.select(*MEMBER_KEYS, "systems")
        .explode("systems")
        .rename({"systems": "system"})
        .drop_nulls("system")
        .unique()
    )


_DIFF_SCHEMA = {
    "system": pl.String,
    "previous": pl.Int64,
    "current": pl.Int64,
    "added": pl.Int64,
    "removed": pl.Int64,
    "kept": pl.Int64,
    "jaccard": pl.Float64,
}


def pool_diff(previous: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """Pool membership change per system (and `all`, by member regardless of system):
    previous, current, added, removed, kept, Jaccard = kept / |prev ∪ cur| (1.0 if both empty)."""
    prev = pool_members(previous).with_columns(pl.lit(1).alias("p"))
    cur = pool_members(current).with_columns(pl.lit(1).alias("c"))
    keys = ["system", *MEMBER_KEYS]

    def tally(a: pl.DataFrame, b: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        j = a.join(b, on=by + list(MEMBER_KEYS) if by else list(MEMBER_KEYS), how="full", coalesce=True)
        j = j.with_columns(pl.col("p").fill_null(0), pl.col("c").fill_null(0))
        agg = [
            pl.col("p").sum().alias("previous"),
            pl.col("c").sum().alias("current"),
            ((pl.col("c") == 1) & (pl.col("p") == 0)).sum().alias("added"),
            ((pl.col("p") == 1) & (pl.col("c") == 0)).sum().alias("removed"),
            ((pl.col("p") == 1) & (pl.col("c") == 1)).sum().alias("kept"),
        ]
        return j.group_by(by).agg(agg) if by else j.select(agg).with_columns(pl.lit(OVERALL).alias("system"))

    per_sys = tally(prev.select(*keys, "p"), cur.select(*keys, "c"), ["system"])
    overall = tally(prev.select(*MEMBER_KEYS, "p").unique(), cur.select(*MEMBER_KEYS, "c").unique(), [])
    out = pl.concat([per_sys.sort("system"), overall.select(per_sys.columns)], how="vertical")
    union = pl.col("previous") + pl.col("added")
    out = out.with_columns(pl.when(union > 0).then(pl.col("kept") / union).otherwise(1.0).alias("jaccard"))
    return out.select([pl.col(c).cast(t) for c, t in _DIFF_SCHEMA.items()])


# ---------------------------------------------------------------------------------------------
# Drift pack
# ---------------------------------------------------------------------------------------------
def labelled_hits(hits: pl.DataFrame, qrels: pl.DataFrame, queries: pl.DataFrame) -> pl.DataFrame:
    """Hits labelled for calibration: label 1 when the hit earns span credit from a relevant
    span (inside it or IoU >= 0.5, SPEC §4), else 0. Columns: system, qid, intent, language,
    score, label (what `lens_core.calibrate.calibration` takes)."""
    for name, df, cols in (
        ("hits", hits, ("run_id", "system", "qid", "rank", "repo", "path", "start_line", "end_line", "score")),
        ("qrels", qrels, (*MEMBER_KEYS, "rel")),
        ("queries", queries, ("qid", "intent", "language")),
    ):
        miss = [c for c in cols if c not in df.columns]
        if miss:
            raise ValueError(f"drift pack: {name} lacks column(s) {', '.join(miss)}")
    matched = (
        match_pairs(hits, relevant_spans(qrels), file_only=False)
        .select("run_id", "system", "qid", "rank")
        .unique()
        .with_columns(pl.lit(1.0).alias("label"))
    )
    out = (
        hits.select("run_id", "system", "qid", "rank", "score")
        .join(matched, on=["run_id", "system", "qid", "rank"], how="left")
        .with_columns(pl.col("label").fill_null(0.0))
        .join(queries.select("qid", "intent", "language"), on="qid", how="left")
    )
    unknown = out.filter(pl.col("intent").is_null())
    if unknown.height:
        raise ValueError(
            f"drift pack: {unknown.height} hit(s) of qid(s) not in the query table, e.g. {unknown['qid'][0]!r}"
        )
    return out.select("system", "qid", "intent", "language", "score", "label")


def _weighted(df: pl.DataFrame, by: list[str], metrics: Sequence[str], weight: str) -> pl.DataFrame:
    aggs = []
    for m in metrics:
        ok = pl.col(m).is_not_null() & pl.col(m).is_finite()
        w = pl.when(ok).then(pl.col(weight)).otherwise(0)
        aggs.append(
            pl.when(w.sum() > 0)
            .then((pl.when(ok).then(pl.col(m)).otherwise(0) * w).sum() / w.sum())
            .otherwise(None)
            .alias(m)
        )
    if by:
        return df.group_by(by).agg(aggs).sort(by)
    return df.select(aggs)


def drift_summary(
    labelled: pl.DataFrame,
    previous: pl.DataFrame | None = None,
    noise_reps: int = 200,
    seed: int = 0,
    min_labels: int = cal.DEFAULT_MIN_LABELS,
    drift_rate: float = cal.DEFAULT_DRIFT_RATE,
) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """The drift pack of one week's labelled hits.

    Calibrators are fitted on the fit half and evaluated on the held-out half per cell
    (`calibration.calibrate`); per system (and `all`) the cell metrics are averaged weighted
    by held-out labels. `clamp_rate`: the previous week's calibrators refitted on this week's
    hits with the slope clamp (`calibration.refit_cells`), averaged weighted by new labels;
    null (with a note) without a previous week. Returns (per-system table with one row per
    system plus `all`: n_labels, DRIFT_METRICS, drift; cell report; notes)."""
    notes: list[str] = []
    if labelled.height == 0:
        raise ValueError("drift pack: no labelled hits")
    cals, report = cal.calibrate(labelled, min_labels=min_labels, noise_reps=noise_reps, seed=seed, nan_policy="omit")
    base = ["ece", "adaptive_ece", "debiased_ece", "brier", "merged_bin_share"]
    per_sys = _weighted(report, ["system"], base, "n_eval")
    overall = _weighted(report, [], base, "n_eval").with_columns(pl.lit(OVERALL).alias("system"))
    n_lab = labelled.group_by("system").len("n_labels")
    table = pl.concat([per_sys, overall.select(per_sys.columns)])
    table = table.join(n_lab, on="system", how="left").with_columns(
        pl.when(pl.col("system") == OVERALL)
        .then(pl.lit(labelled.height))
        .otherwise(pl.col("n_labels"))
        .cast(pl.Int64)
        .alias("n_labels")
    )
    if previous is not None and previous.height:
        prev_cals, _ = cal.calibrate(previous, min_labels=min_labels, noise_reps=10, seed=seed, nan_policy="omit")
        _, refit = cal.refit_cells(
            prev_cals, labelled, nan_policy="omit", min_labels=min(min_labels, 50), drift_rate=drift_rate
        )
        refit = refit.with_columns(pl.col("calibrator").str.split("|").list.first().alias("system"))
        cr = _weighted(refit, ["system"], ["clamp_rate"], "n_new")
        cr_all = _weighted(refit, [], ["clamp_rate"], "n_new").with_columns(pl.lit(OVERALL).alias("system"))
        table = table.join(pl.concat([cr, cr_all.select(cr.columns)]), on="system", how="left")
        skipped = refit.filter(pl.col("clamp_rate").is_null())
        if skipped.height:
            notes.append(
                f"{skipped.height} calibrator(s) not refitted (no cell uses them, too few new labels, "
                "or fewer than 2 confidence bins)"
            )
    else:
        table = table.with_columns(pl.lit(None, dtype=pl.Float64).alias("clamp_rate"))
        notes.append("no previous week's labelled hits: clamp_rate not computed")
    table = table.with_columns((pl.col("clamp_rate").fill_null(0.0) > drift_rate).alias("drift"))
    cols = ["system", "n_labels", *DRIFT_METRICS, "drift"]
    return table.select(cols), report, notes


def history_frame(history: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Long table (partition, system, metric, value) from stored drift summaries, each
    {"partition": ..., "systems": [{system, metric: value, ...}, ...]}; sorted by partition."""
    rows = []
    for h in history:
        for s in h.get("systems", []):
            for m in DRIFT_METRICS:
                v = s.get(m)
                rows.append(
                    (
                        str(h["partition"]),
                        str(s["system"]),
                        m,
                        None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v),
                    )
                )
    return pl.DataFrame(
        rows,
        schema={"partition": pl.String, "system": pl.String, "metric": pl.String, "value": pl.Float64},
        orient="row",
    ).sort("partition", "system", "metric")


def _figure(w: float = 6.4, h: float = 3.6, dpi: int = 90):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_trend(history: pl.DataFrame, metric: str, path: str | Path, threshold: float | None = None) -> Path:
    """A PNG trend of one drift metric across partitions: `all` bold, each system thin."""
    d = history.filter(pl.col("metric") == metric).sort("partition")
    parts = sorted(d["partition"].unique().to_list())
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    x = {p: i for i, p in enumerate(parts)}
    for (system,), g in sorted(d.partition_by("system", as_dict=True).items()):
        g = g.drop_nulls("value")
        if g.height == 0:
            continue
        xs = [x[p] for p in g["partition"].to_list()]
        bold = system == OVERALL
        ax.plot(
            xs,
            g["value"].to_list(),
            marker="o",
            linewidth=2.2 if bold else 0.8,
            alpha=1.0 if bold else 0.5,
            label=system if bold else None,
            color="black" if bold else None,
        )
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xticks(range(len(parts)))
    ax.set_xticklabels(parts, rotation=30, fontsize=7)
    ax.set_title(f"{metric} by week (bold: all systems; thin: each system)", fontsize=9)
    if not parts:
        ax.text(0.5, 0.5, "no history", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Tripwires, heroes
# ---------------------------------------------------------------------------------------------
def evaluate_tripwires(scores: pl.DataFrame | None, per_query: pl.DataFrame | None) -> pl.DataFrame:
    """file_credit (> 5% trips) and flatline (Var(nDCG@10) == 0 trips) per system, from
    `lens_core.decide.gates` (thresholds from config). A missing input trips with the reason."""
    gates = file_credit_gate(scores) + flatline_gate(per_query)
    rows = [
        {
            "tripwire": g.name,
            "system": g.subject or None,
            "value": g.value,
            "threshold": g.threshold,
            "tripped": not g.passed,
            "blocking": g.blocking,
            "owner": g.owner,
            "reason": g.reason,
        }
        for g in gates
    ]
    return pl.DataFrame(
        rows,
        schema={
            "tripwire": pl.String,
            "system": pl.String,
            "value": pl.Float64,
            "threshold": pl.Float64,
            "tripped": pl.Boolean,
            "blocking": pl.Boolean,
            "owner": pl.String,
            "reason": pl.String,
        },
    )


def pick_heroes(
    scores: pl.DataFrame,
    packs: Mapping[str, str],
    baseline: str,
    metric: str = "ndcg_10",
    hero_packs: Iterable[str] | None = None,
) -> dict[str, str]:
    """Per pack the variant with the best mean `metric` (slice all). The promotion rules of
    SPEC §8 are judged by the gates; this is the monitoring view of each pack's leader."""
    s = scores.filter((pl.col("slice") == SLICE_ALL) & (pl.col("metric") == metric))
    best: dict[str, tuple[float, str]] = {}
    allowed = set(hero_packs) if hero_packs is not None else set()
    for system, mean in s.select("system", "mean").iter_rows():
        pack = packs.get(system, "")
        if not pack or system == baseline or mean is None or not math.isfinite(mean):
            continue
        if hero_packs is not None and pack not in allowed:
            continue
        if pack not in best or (mean, system) > best[pack]:
            best[pack] = (mean, system)
    return {p: s_ for p, (_, s_) in sorted(best.items())}


def hero_vs_baseline(
    per_query: pl.DataFrame,
    baseline: str,
    heroes: Mapping[str, str],
    metrics: Sequence[str] = HERO_METRICS,
    b_ci: int = 2000,
    b_perm: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Each hero vs the baseline on slice `all`: paired delta with its CI (lens_core.stats.compare.compare)
    and a status: `regression` when the CI lies below 0, `improvement` above 0, else `flat`."""
    if baseline not in set(per_query.get_column("system").unique().to_list()):
        raise ValueError(f"hero monitoring: baseline {baseline!r} is not in the per-query table")
    frames = []
    for pack, hero in heroes.items():
        c = compare(
            per_query,
            baseline,
            hero,
            list(metrics),
            slices=(SLICE_ALL,),
            b_ci=b_ci,
            b_perm=b_perm,
            seed=seed,
            alpha=alpha,
        )
        frames.append(
            c.select("control", "test", "metric", "delta", "ci_low", "ci_high", "p_value", "n", "status").with_columns(
                pl.lit(pack).alias("pack")
            )
        )
    schema = {
        "pack": pl.String,
        "control": pl.String,
        "test": pl.String,
        "metric": pl.String,
        "delta": pl.Float64,
        "ci_low": pl.Float64,
        "ci_high": pl.Float64,
        "p_value": pl.Float64,
        "n": pl.Int64,
        "status": pl.String,
        "verdict": pl.String,
    }
    if not frames:
        return pl.DataFrame(schema=schema)
    out = (
        pl.concat(frames)
        .rename({"status": "stat_status"})
        .with_columns(
            pl.when(pl.col("ci_high") < 0)
            .then(pl.lit("regression"))
            .when(pl.col("ci_low") > 0)
            .then(pl.lit("improvement"))
            .otherwise(pl.lit("flat"))
            .alias("verdict")
        )
        .rename({"stat_status": "status"})
    )
    return out.select([pl.col(c).cast(t) for c, t in schema.items()])


def plot_ci_whiskers(
    scores: pl.DataFrame, path: str | Path, metrics: Sequence[str] = ("ndcg_10", "sla_recall_50"), title: str = ""
) -> Path:
    """Per-system means with 95% CI whiskers, one panel per metric (slice all)."""
    s = scores.filter((pl.col("slice") == SLICE_ALL) & pl.col("metric").is_in(list(metrics)))
    systems = sorted(s["system"].unique().to_list())
    if not systems:
        raise ValueError("CI whiskers: no scores for slice `all`")
    fig = _figure(w=7.0, h=0.32 * len(systems) * 1 + 1.6)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    y = np.arange(len(systems))
    for ax, m in zip(axes, metrics):
        d = {r["system"]: r for r in s.filter(pl.col("metric") == m).iter_rows(named=True)}
        mean = np.array([d[k]["mean"] if k in d else np.nan for k in systems], dtype=float)
        lo = np.array([d[k]["ci_low"] if k in d else np.nan for k in systems], dtype=float)
        hi = np.array([d[k]["ci_high"] if k in d else np.nan for k in systems], dtype=float)
        err = np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
        ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3, markersize=4)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(systems, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Continuous monitors: problems, hero health, emergency checks, incident reconciliation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Something red. `key` is the PagerDuty dedup key: one incident per key until resolved."""

    key: str
    summary: str
    severity: str = "error"  # PagerDuty: critical | error | warning | info
    component: str = ""
    owners: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["owners"] = list(self.owners)
        return d


def read_published_bundle(root: str | Path) -> tuple[dict | None, Path | None, list[Problem]]:
    """(pointer, bundle dir, problems) for `$LENS_DATA_DIR/published.json`."""
    root = Path(root)
    ptr_path = root / PUBLISHED_POINTER
    if not ptr_path.is_file():
        return None, None, []
    try:
        ptr = json.loads(ptr_path.read_text())
        bundle = root / ptr["bundle"]
    except (ValueError, KeyError, TypeError) as e:
        return (
            None,
            None,
            [
                Problem(
                    "lens/published/pointer",
                    f"{ptr_path}: unreadable published pointer ({e})",
                    "critical",
                    "release_bundle",
                )
            ],
        )
    if not (bundle / BUNDLE_FILES["attestation"]).is_file():
        return (
            ptr,
            None,
            [
                Problem(
                    "lens/published/bundle",
                    f"published pointer names {ptr['bundle']}, which has no attestation.json",
                    "critical",
                    "release_bundle",
                )
            ],
        )
    return ptr, bundle, []


def hero_health(root: str | Path, now: datetime, max_age_days: float = 8.0) -> tuple[list[Problem], dict[str, Any]]:
    """Cheap checks of the published hero table (one small CSV): published bundle present and
    younger than `max_age_days`; per system p99/p95 within the tail gate and file-only credit
    within the file_credit gate; every headline metric finite."""
    ptr, bundle, problems = read_published_bundle(root)
    info: dict[str, Any] = {"fingerprint": ptr.get("fingerprint") if ptr else None}
    if ptr is None and not problems:
        return [Problem("lens/hero_health/unpublished", "no published bundle yet", "warning", "release_bundle")], info
    if bundle is None:
        return problems, info
    created = ptr.get("published_ms")
    if created is None:
        created = json.loads((bundle / BUNDLE_FILES["attestation"]).read_text()).get("created_ms")
    age_days = (now.timestamp() * 1000 - float(created)) / 86_400_000 if created is not None else None
    info["age_days"] = age_days
    if age_days is not None and age_days > max_age_days:
        problems.append(
            Problem(
                "lens/hero_health/stale",
                f"published bundle {ptr['fingerprint']} is "
                f"{age_days:.1f} days old (> {max_age_days}): a weekly run was missed",
                "error",
                "release_bundle",
                details={"age_days": age_days},
            )
        )
    table_path = bundle / BUNDLE_FILES["hero_table"]
    if not table_path.is_file():
        problems.append(Problem("lens/hero_health/table", f"{table_path} missing", "critical", "hero_table"))
        return problems, info
    hero = pl.read_csv(table_path)
    info["systems"] = hero.height
    tail_thr = float(gate_config("tail").threshold)
    fc_thr = float(gate_config("file_credit").threshold)
    for r in hero.iter_rows(named=True):
        sysname = r["system"]
        bad = [
            m
            for m in ("ndcg_10", "sla_recall_50", "lat_p95", "lat_p99")
            if m in r and (r[m] is None or not math.isfinite(float(r[m])))
        ]
        if bad:
            problems.append(
                Problem(
                    f"lens/hero_health/{sysname}/non_finite",
                    f"{sysname}: non-finite {', '.join(bad)} in the published hero table",
                    "error",
                    "hero_table",
                )
            )
        if r.get("p99_p95") is not None and float(r["p99_p95"]) > tail_thr:
            problems.append(
                Problem(
                    f"lens/hero_health/{sysname}/tail",
                    f"{sysname}: p99/p95 = {float(r['p99_p95']):.3f} > {tail_thr}",
                    "error",
                    "hero_table",
                    details={"p99_p95": float(r["p99_p95"])},
                )
            )
        if r.get("file_credit") is not None and float(r["file_credit"]) > fc_thr:
            problems.append(
                Problem(
                    f"lens/hero_health/{sysname}/file_credit",
                    f"{sysname}: file-only credit {float(r['file_credit']):.4f} > {fc_thr}",
                    "error",
                    "hero_table",
                )
            )
    return problems, info


def emergency_checks(root: str | Path, deep: bool = True) -> tuple[list[Problem], str]:
    """The every-minute tripwire over the published bundle: pointer readable, bundle and
    attestation present, fingerprint consistent, every blocking gate green in the attestation;
    with `deep`, the sha256 of scores and hero table match the attestation and the
    file_credit / flatline tripwires hold on the published tables. Returns (problems,
    signature): the signature changes when the pointer or the bundle's files change, so a
    caller can skip `deep` work when nothing moved."""
    root = Path(root)
    ptr, bundle, problems = read_published_bundle(root)
    ptr_file = root / PUBLISHED_POINTER
    if ptr is None:
        return problems, f"none:{ptr_file.stat().st_mtime_ns if ptr_file.exists() else 0}"
    if bundle is None:
        return problems, f"broken:{ptr_file.stat().st_mtime_ns}"
    att_path = bundle / BUNDLE_FILES["attestation"]
    sig_files = [
        att_path,
        bundle / BUNDLE_FILES["scores"],
        bundle / BUNDLE_FILES["hero_table"],
        bundle / BUNDLE_FILES["per_query"],
    ]
    sig = "|".join(
        [str(ptr.get("fingerprint"))]
        + [f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}" if p.exists() else f"{p.name}:-" for p in sig_files]
    )
    att = json.loads(att_path.read_text())
    fp = ptr.get("fingerprint")
    if att.get("fingerprint") != fp:
        problems.append(
            Problem(
                "lens/emergency/fingerprint",
                f"published pointer says {fp} but the bundle's attestation says {att.get('fingerprint')}",
                "critical",
                "release_bundle",
            )
        )
    red = [g for g in att.get("gates", []) if g.get("blocking") and not g.get("passed")]
    if red or att.get("all_blocking_green") is False:
        names = ", ".join(g["name"] + (f"[{g['subject']}]" if g.get("subject") else "") for g in red)
        problems.append(
            Problem(
                f"lens/emergency/{fp}/red_published",
                f"published bundle {fp} has red blocking gate(s): {names or 'all_blocking_green is false'}",
                "critical",
                "release_bundle",
            )
        )
    if deep:
        for key in ("scores", "hero_table"):
            rel = BUNDLE_FILES[key]
            want = att.get("artifacts", {}).get(rel)
            p = bundle / rel
            if want is None or not p.is_file() or sha256_file(p) != want:
                problems.append(
                    Problem(
                        f"lens/emergency/{fp}/tampered/{key}",
                        f"published {rel} does not match its attestation sha256 (missing or changed)",
                        "critical",
                        "release_bundle",
                    )
                )
        scores_p, pq_p = bundle / BUNDLE_FILES["scores"], bundle / BUNDLE_FILES["per_query"]
        if scores_p.is_file() and pq_p.is_file():
            try:
                trips = evaluate_tripwires(pl.read_parquet(scores_p), pl.read_parquet(pq_p)).filter(pl.col("tripped"))
            except (OSError, ValueError, pl.exceptions.PolarsError) as e:
                problems.append(
                    Problem(
                        f"lens/emergency/{fp}/unreadable",
                        f"published scores/per_query of {fp} cannot be read: {type(e).__name__}: {str(e)[:200]}",
                        "critical",
                        "scores",
                    )
                )
                trips = pl.DataFrame(schema={"tripwire": pl.String})
            for r in trips.iter_rows(named=True):
                problems.append(
                    Problem(
                        f"lens/emergency/{fp}/{r['tripwire']}/{r['system'] or 'all'}",
                        f"published bundle {fp}: {r['tripwire']} tripped for {r['system']}: {r['reason']}",
                        "critical",
                        "scores",
                        owners=(r["owner"],) if r["owner"] else (),
                    )
                )
    return problems, sig


def reconcile(open_keys: Iterable[str], problems: Sequence[Problem], trigger, resolve) -> tuple[set[str], dict]:
    """Page each problem whose key is not open yet, resolve each open key that is no longer a
    problem. `trigger(problem) -> bool` and `resolve(key) -> bool` return False when the webhook
    is down: a failed trigger stays closed (retried next tick, never twice once sent), a failed
    resolve stays open (retried next tick). Returns (keys open now, {triggered, resolved, failed})."""
    open_now = set(open_keys)
    current = {p.key: p for p in problems}
    log: dict[str, list[str]] = {"triggered": [], "resolved": [], "failed": []}
    for key, p in sorted(current.items()):
        if key in open_now:
            continue
        if trigger(p):
            open_now.add(key)
            log["triggered"].append(key)
        else:
            log["failed"].append(key)
    for key in sorted(open_now - set(current)):
        if resolve(key):
            open_now.discard(key)
            log["resolved"].append(key)
        else:
            log["failed"].append(key)
    return open_now, log


def gate_problems(evaluations: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """The gate monitor's view of the latest check evaluations: one incident per group of
    assets whose latest ERROR-severity evaluation failed. Each evaluation: {asset, check,
    group, passed, severity ("ERROR"|"WARN"), partition, owners}. WARN failures are listed in
    the details of a red group but do not page on their own."""
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for e in evaluations:
        if e.get("passed") is False:
            by_group.setdefault(str(e.get("group") or "default"), []).append(e)
    out = []
    for group, fails in sorted(by_group.items()):
        errors = [e for e in fails if str(e.get("severity", "ERROR")).upper() == "ERROR"]
        if not errors:
            continue
        names = ", ".join(
            f"{e['asset']}.{e['check']}" + (f"[{e['partition']}]" if e.get("partition") else "") for e in errors
        )
        owners = tuple(sorted({o for e in errors for o in (e.get("owners") or ())}))
        out.append(
            Problem(
                f"lens/gate_monitor/{group}",
                f"{len(errors)} blocking gate(s) red in group {group}: {names}",
                "critical",
                group,
                owners,
                details={"red": [dict(e) for e in errors], "warn": [dict(e) for e in fails if e not in errors]},
            )
        )
    return out


def missed_weekly_run(
    now: datetime, latest_partition: str | None, grace_hours: float = 6.0, tz: str = TZ
) -> Problem | None:
    """A problem when the weekly partition that `now` implies has no published-chain
    materialisation `grace_hours` after its start (default: Sunday 08:00 US/Eastern)."""
    expected = weekly_partition_for(now, tz)
    deadline = weekly_start(expected, tz).timestamp() + grace_hours * 3600
    if now.timestamp() < deadline:
        expected = previous_week(expected)  # still inside this week's window: judge last week
    if latest_partition is not None and latest_partition >= expected:
        return None
    return Problem(
        f"lens/gate_monitor/weekly_run/{expected}",
        f"weekly run for partition {expected} has not "
        f"materialised release_bundle (latest: {latest_partition or 'none'})",
        "error",
        "release_bundle",
        details={"expected": expected, "latest": latest_partition},
    )
