"""The small assets behind the nightly and Sunday monitoring jobs (group `monitoring`).

Thin: each reads stored weekly tables, calls `lens_core.monitor.monitoring`, writes its output under
`$LENS_DATA_DIR/monitoring/<job>/<date>/` (atomic writes) and reports metadata and checks.
Daily assets are partitioned by date and read the weekly partition the date implies (tag
`lens/weekly_partition` when a schedule launched them), falling back to the newest stored
partition before it; Sunday assets share the weekly partitions of the Lens chain.

Why this is one module: the nightly and daily monitoring assets of SPEC §13 are each a thin wrapper (read the latest weekly tables, call lens_core.monitor, write metadata) over the same helpers (`_weekly_for`, `_read`, `_write`); one file per schedule row would repeat them.
"""

import json

import dagster as dg
import polars as pl

from lens_assets.common import weekly_partitions
from lens_assets.metadata import markdown_table, png_markdown
from lens_core.calibrate import calibration as cal
from lens_core.common.calendar import previous_week
from lens_core.common.contracts import QUERIES_SCHEMA
from lens_core.common.settings import data_dir, load_config
from lens_core.common.systems import baseline as baseline_system
from lens_core.common.tables import read_parquet, write_parquet
from lens_core.decide.gates import gate_config
from lens_core.monitor import monitoring as M
from schedules.common import (
    GROUP,
    OWNERS_CAL,
    OWNERS_CORE,
    OWNERS_EVAL,
    POOL,
    WEEKLY_PARTITION_TAG,
    daily_partitions,
    implied_weekly_for_day,
    monitoring_dir,
    resolve_weekly,
    table_path,
    write_summary,
)

MD = dg.MetadataValue.md


def _weekly_for(context: dg.AssetExecutionContext, needed: tuple[str, ...]) -> tuple[str, str, bool]:
    implied = context.run.tags.get(WEEKLY_PARTITION_TAG) or implied_weekly_for_day(context.partition_key)
    used, fallback = resolve_weekly(implied, needed)
    if fallback:
        context.log.warning(f"weekly partition {implied} is not stored (yet): reading {used} instead")
    return implied, used, fallback


def _read(asset: str, pk: str) -> pl.DataFrame:
    return read_parquet(table_path(asset, pk))


def _source_md(implied: str, used: str, fallback: bool) -> dict:
    return {"weekly_partition": used, "weekly_partition_implied": implied, "fallback": fallback}


# ---------------------------------------------------------------------------------------------
# daily 02:00 — hero monitoring vs baseline
# ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet"},
    partitions_def=daily_partitions,
    pool=POOL,
    description="Nightly hero monitoring: each pack's leading variant (best nDCG@10) vs the baseline on the "
    "latest weekly per-query table, paired deltas of nDCG@10 and SLA-Recall@50 with CIs "
    "(lens_core.stats.compare.compare). Writes `monitoring/hero_monitoring/<date>/`.",
    check_specs=[
        dg.AssetCheckSpec(
            "heroes_not_below_baseline",
            asset="hero_monitor",
            description="No pack leader's delta CI lies entirely below 0 vs baseline.",
        )
    ],
)
def hero_monitor(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    implied, used, fallback = _weekly_for(context, ("per_query", "scores", "hero_table"))
    cfg = load_config()
    base = baseline_system(cfg).name
    hero_t = _read("hero_table", used)
    packs = dict(zip(hero_t["system"].to_list(), hero_t["pack"].to_list()))
    heroes = M.pick_heroes(_read("scores", used), packs, base, hero_packs=list(cfg.packs))
    res = M.hero_vs_baseline(
        _read("per_query", used), base, heroes, b_ci=cfg.run.ci_b, b_perm=2000, seed=cfg.run.seed, alpha=cfg.run.alpha
    )
    out = monitoring_dir("hero_monitoring", context.partition_key)
    write_parquet(res, out / "hero_vs_baseline.parquet")
    regress = res.filter(pl.col("verdict") == "regression")
    write_summary(
        out,
        {
            "date": context.partition_key,
            **_source_md(implied, used, fallback),
            "baseline": base,
            "heroes": heroes,
            "regressions": regress.select("pack", "test", "metric", "delta").to_dicts(),
        },
    )
    return dg.MaterializeResult(
        metadata={
            **_source_md(implied, used, fallback),
            "baseline": base,
            "heroes": dg.MetadataValue.json(heroes),
            "dagster/row_count": res.height,
            "path": dg.MetadataValue.path(str(out)),
            "comparison": MD(
                markdown_table(res.select("pack", "test", "metric", "delta", "ci_low", "ci_high", "verdict"))
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="heroes_not_below_baseline",
                passed=regress.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"regressions": regress.height, "partition_read": used},
            )
        ],
    )


# ---------------------------------------------------------------------------------------------
# daily 02:15 — micro-suite refresh
# ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet"},
    partitions_def=daily_partitions,
    pool=POOL,
    description="Nightly micro-suites: per suite >= 800 queries (all when a suite is smaller, reported), "
    "stratified by intent x language, seeded by the date. Writes "
    "`monitoring/micro_suite_refresh/<date>/micro_suites.parquet`.",
    check_specs=[
        dg.AssetCheckSpec(
            "micro_suite_size",
            asset="micro_suites",
            description="Every suite reaches the micro-suite size (else: all taken).",
        )
    ],
)
def micro_suites(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    implied, used, fallback = _weekly_for(context, ("query_suites",))
    n = load_config().monitoring.micro_suite_size
    sample, report = M.sample_micro_suites(_read("query_suites", used), context.partition_key, per_suite=n)
    summary = M.micro_suite_summary(report, n)
    out = monitoring_dir("micro_suite_refresh", context.partition_key)
    info = write_parquet(
        sample.select([f.name for f in QUERIES_SCHEMA]),
        out / "micro_suites.parquet",
        schema=QUERIES_SCHEMA,
        name="micro_suites",
    )
    write_parquet(report, out / "strata.parquet")
    short = summary.filter(pl.col("note").is_not_null())
    for r in short.iter_rows(named=True):
        context.log.warning(f"micro-suite {r['suite']}: {r['note']}")
    write_summary(
        out,
        {
            "date": context.partition_key,
            **_source_md(implied, used, fallback),
            "size": n,
            "sha256": info["sha256"],
            "suites": summary.to_dicts(),
        },
    )
    return dg.MaterializeResult(
        metadata={
            **_source_md(implied, used, fallback),
            "dagster/row_count": sample.height,
            "sha256": info["sha256"],
            "suites": MD(markdown_table(summary)),
            "path": dg.MetadataValue.path(info["path"]),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="micro_suite_size",
                passed=short.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"short_suites": ", ".join(short["suite"].to_list()) or "none", "size": n},
            )
        ],
    )


# ---------------------------------------------------------------------------------------------
# daily 02:30 — Parquet regeneration
# ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    owners=OWNERS_CORE,
    kinds={"polars", "parquet"},
    partitions_def=daily_partitions,
    pool=POOL,
    description="Nightly idempotency proof: re-ingest the latest weekly partition's raw runs (after checking "
    "their sha256 against the manifest) into agg/hits and compare bytes and sha256 with the "
    "stored tables. Writes `monitoring/parquet_regeneration/<date>/`.",
    check_specs=[
        dg.AssetCheckSpec(
            "regeneration_identical",
            asset="parquet_regeneration",
            description="Regenerated agg/hits are byte-identical to the stored ones.",
        )
    ],
)
def parquet_regeneration(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    implied, used, fallback = _weekly_for(context, ("raw_runs", "agg", "hits"))
    manifest = _read("raw_runs", used)
    root = data_dir()
    bad_raw = M.verify_raw_runs(manifest, root)
    out = monitoring_dir("parquet_regeneration", context.partition_key)
    regen = M.regenerate_tables([root / p for p in manifest["path"].to_list()], out)
    cmp = M.compare_files({"agg": table_path("agg", used), "hits": table_path("hits", used)}, regen)
    ok = bool(cmp["identical"].all()) and not bad_raw
    write_parquet(cmp, out / "comparison.parquet")
    write_summary(
        out,
        {
            "date": context.partition_key,
            **_source_md(implied, used, fallback),
            "identical": ok,
            "raw_runs_mismatch": bad_raw,
            "tables": cmp.to_dicts(),
        },
    )
    return dg.MaterializeResult(
        metadata={
            **_source_md(implied, used, fallback),
            "identical": ok,
            "raw_files": manifest.height,
            "comparison": MD(
                markdown_table(cmp.select("table", "stored_sha256", "regenerated_sha256", "stored_bytes", "identical"))
            ),
            "path": dg.MetadataValue.path(str(out)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="regeneration_identical",
                passed=ok,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "differs": ", ".join(cmp.filter(~pl.col("identical"))["table"].to_list()) or "none",
                    "raw_runs_mismatch": "; ".join(bad_raw) or "none",
                },
            )
        ],
    )


# ---------------------------------------------------------------------------------------------
# daily 02:45 — CI whiskers
# ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    owners=OWNERS_EVAL,
    kinds={"png"},
    partitions_def=daily_partitions,
    pool=POOL,
    description="Nightly CI whiskers: per-system nDCG@10 and SLA-Recall@50 with 95% CIs from the latest "
    "scores, as a PNG (`monitoring/ci_whiskers/<date>/ci_whiskers.png`) shown in the metadata.",
)
def ci_whiskers(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    implied, used, fallback = _weekly_for(context, ("scores",))
    out = monitoring_dir("ci_whiskers", context.partition_key)
    png = M.plot_ci_whiskers(
        _read("scores", used), out / "ci_whiskers.png", title=f"weekly partition {used} (read {context.partition_key})"
    )
    write_summary(out, {"date": context.partition_key, **_source_md(implied, used, fallback), "png": str(png)})
    return dg.MaterializeResult(
        metadata={
            **_source_md(implied, used, fallback),
            "png": dg.MetadataValue.path(str(png)),
            "ci_whiskers": MD(png_markdown(png, "CI whiskers")),
        }
    )


# ---------------------------------------------------------------------------------------------
# Sunday 03:00 — drift pack
# ---------------------------------------------------------------------------------------------
def _labelled(pk: str) -> pl.DataFrame:
    return M.labelled_hits(_read("hits", pk), _read("qrels", pk), _read("query_suites", pk))


def _require(pk: str, needed: tuple[str, ...]) -> None:
    missing = [a for a in needed if not table_path(a, pk).is_file()]
    if missing:
        raise FileNotFoundError(
            f"weekly partition {pk}: {', '.join(missing)} not stored under "
            f"{data_dir() / 'staging'}; run weekly_lens_job for {pk} first"
        )


def load_drift_history(before: str) -> list[dict]:
    base = data_dir() / "monitoring" / "drift_pack"
    out = []
    for p in sorted(base.glob("*/summary.json")) if base.is_dir() else []:
        d = json.loads(p.read_text())
        if str(d.get("partition", "")) < before:
            out.append(d)
    return out


@dg.asset(
    group_name=GROUP,
    owners=OWNERS_CAL,
    kinds={"polars", "png"},
    partitions_def=weekly_partitions,
    pool=POOL,
    deps=["hits", "qrels", "query_suites"],
    description="Sunday drift pack over the week's labelled hits: ECE, adaptive ECE, debiased ECE, Brier, "
    "merged-bin share (calibrators fitted per cell, held-out half) and the clamp rate of the "
    "previous week's calibrators refitted on this week, per system and overall, each with a "
    "trend plot across stored weeks. Writes `monitoring/drift_pack/<partition>/`.",
    check_specs=[
        dg.AssetCheckSpec(
            "calibration_drift",
            asset="drift_pack",
            description="Overall clamp rate <= 10% (SPEC §6: above is drift, P1).",
        )
    ],
)
def drift_pack(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    pk = context.partition_key
    _require(pk, ("hits", "qrels", "query_suites"))
    prev_pk = previous_week(pk)
    prev = (
        _labelled(prev_pk) if all(table_path(a, prev_pk).is_file() for a in ("hits", "qrels", "query_suites")) else None
    )
    cfg = load_config()
    table, cells, notes = M.drift_summary(_labelled(pk), prev, seed=cfg.run.seed)
    out = monitoring_dir("drift_pack", pk)
    write_parquet(table, out / "drift.parquet")
    write_parquet(cells, out / "cells.parquet")
    summary = {
        "partition": pk,
        "previous": prev_pk if prev is not None else None,
        "notes": notes,
        "systems": table.to_dicts(),
    }
    history = M.history_frame(load_drift_history(pk) + [summary])
    thresholds = {
        "ece": gate_config("ece").threshold,
        "adaptive_ece": gate_config("ece").threshold,
        "debiased_ece": gate_config("ece").threshold,
        "clamp_rate": cal.DEFAULT_DRIFT_RATE,
    }
    md = {}
    for m in M.DRIFT_METRICS:
        png = M.plot_trend(history, m, out / f"trend_{m}.png", thresholds.get(m))
        md[f"trend_{m}"] = MD(png_markdown(png, m))
    write_summary(out, summary)
    overall = table.filter(pl.col("system") == M.OVERALL).row(0, named=True)
    clamp = overall["clamp_rate"]
    return dg.MaterializeResult(
        metadata={
            "drift": MD(markdown_table(table)),
            "weeks_in_history": history["partition"].n_unique(),
            "notes": "; ".join(notes) or "none",
            "path": dg.MetadataValue.path(str(out)),
            **md,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="calibration_drift",
                passed=clamp is None or clamp <= cal.DEFAULT_DRIFT_RATE,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "clamp_rate": clamp if clamp is not None else "not computed (no previous week)",
                    "threshold": cal.DEFAULT_DRIFT_RATE,
                },
            )
        ],
    )


# ---------------------------------------------------------------------------------------------
# Sunday 04:00 — calibrator parity suite
# ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    owners=OWNERS_CAL,
    kinds={"polars", "sklearn"},
    partitions_def=weekly_partitions,
    pool=POOL,
    deps=["hits", "qrels", "query_suites"],
    description="Sunday calibrator parity suite (SPEC §6): every calibrator of the week, round-tripped through "
    "its JSON export, vs scikit-learn refitted on the same rows: max|Δ| <= 1e-6, |ΔECE| <= 1e-4. "
    "Writes `monitoring/calibrator_parity/<partition>/`.",
    check_specs=[
        dg.AssetCheckSpec(
            "calibrator_parity",
            asset="calibrator_parity",
            description="Every calibrator's export matches the in-memory model.",
        )
    ],
)
def calibrator_parity(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    pk = context.partition_key
    _require(pk, ("hits", "qrels", "query_suites"))
    labelled = _labelled(pk)
    cals, _ = cal.calibrate(labelled, noise_reps=10, nan_policy="omit")
    res = cal.parity_cells(cals, labelled)
    out = monitoring_dir("calibrator_parity", pk)
    write_parquet(res, out / "parity.parquet")
    cals.write(out / "calibrators")
    failed = res.filter(~pl.col("passed"))
    write_summary(
        out,
        {
            "partition": pk,
            "calibrators": res.height,
            "failed": failed["calibrator"].to_list(),
            "max_abs_diff": res["max_abs_diff"].max(),
            "max_ece_diff": res["ece_diff"].max(),
        },
    )
    return dg.MaterializeResult(
        metadata={
            "calibrators": res.height,
            "max_abs_diff": float(res["max_abs_diff"].max() or 0.0),
            "max_ece_diff": float(res["ece_diff"].max() or 0.0),
            "parity": MD(markdown_table(res, float_fmt="{:.2e}")),
            "path": dg.MetadataValue.path(str(out)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="calibrator_parity",
                passed=failed.height == 0 and res.height > 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"failed": ", ".join(failed["calibrator"].to_list()) or "none", "threshold": 1e-6},
            )
        ],
    )


# ---------------------------------------------------------------------------------------------
# Sunday 05:00 — pool audit diff
# ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet"},
    partitions_def=weekly_partitions,
    pool=POOL,
    deps=["pool"],
    description="Sunday pool audit: pool membership of this week vs the previous week's partition, per system "
    "and overall: added, removed, kept, Jaccard. Writes `monitoring/pool_audit/<partition>/`.",
)
def pool_audit(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    pk = context.partition_key
    _require(pk, ("pool",))
    prev_pk = previous_week(pk)
    out = monitoring_dir("pool_audit", pk)
    if not table_path("pool", prev_pk).is_file():
        note = f"no stored pool for the previous week {prev_pk}: nothing to diff against"
        context.log.warning(note)
        write_summary(out, {"partition": pk, "previous": None, "note": note})
        return dg.MaterializeResult(metadata={"previous": "none", "note": note})
    diff = M.pool_diff(_read("pool", prev_pk), _read("pool", pk))
    write_parquet(diff, out / "pool_diff.parquet")
    overall = diff.filter(pl.col("system") == M.OVERALL).row(0, named=True)
    write_summary(out, {"partition": pk, "previous": prev_pk, "overall": overall, "systems": diff.to_dicts()})
    return dg.MaterializeResult(
        metadata={
            "previous": prev_pk,
            "jaccard": float(overall["jaccard"]),
            "added": int(overall["added"]),
            "removed": int(overall["removed"]),
            "diff": MD(markdown_table(diff)),
            "path": dg.MetadataValue.path(str(out)),
        }
    )


# ---------------------------------------------------------------------------------------------
# Sunday 06:00 — tripwires
# ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    owners=OWNERS_EVAL,
    kinds={"polars"},
    partitions_def=weekly_partitions,
    pool=POOL,
    deps=["scores", "per_query"],
    description="Sunday tripwires from the week's scores and per-query table (lens_core.decide.gates): "
    "file_credit > 5% and flatline Var(nDCG@10) == 0, per system. "
    "Writes `monitoring/tripwires/<partition>/`.",
    check_specs=[
        dg.AssetCheckSpec("tripwires", asset="tripwires", description="No system trips file_credit (> 5%) or flatline.")
    ],
)
def tripwires(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    pk = context.partition_key
    _require(pk, ("scores", "per_query"))
    res = M.evaluate_tripwires(_read("scores", pk), _read("per_query", pk))
    out = monitoring_dir("tripwires", pk)
    write_parquet(res, out / "tripwires.parquet")
    tripped = res.filter(pl.col("tripped"))
    write_summary(out, {"partition": pk, "tripped": tripped.to_dicts(), "evaluated": res.height})
    return dg.MaterializeResult(
        metadata={
            "tripped": tripped.height,
            "tripwires": MD(markdown_table(res.select("tripwire", "system", "value", "threshold", "tripped"))),
            "path": dg.MetadataValue.path(str(out)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="tripwires",
                passed=tripped.height == 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "tripped": ", ".join(f"{r['tripwire']}[{r['system']}]" for r in tripped.iter_rows(named=True))
                    or "none"
                },
            )
        ],
    )


MONITORING_ASSETS = [
    hero_monitor,
    micro_suites,
    parquet_regeneration,
    ci_whiskers,
    drift_pack,
    calibrator_parity,
    pool_audit,
    tripwires,
]
