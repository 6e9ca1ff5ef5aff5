"""Decision assets: comparisons (SPEC §5), calibration (§6), hero-pack promotion (§8), the gate
summary with one asset check per gate (§7). Thin: every computation lives in lens_core."""

import json
import shutil

import dagster as dg
import polars as pl

from lens_assets.common import (
    GROUP,
    OWNERS_CAL,
    OWNERS_CORE,
    OWNERS_EVAL,
    calibration_dir,
    current_systems,
    weekly_partitions,
)
from lens_assets.metadata import markdown_table, pngs_markdown, table_metadata
from lens_core.calibrate.calibration import CalibratorSet
from lens_core.calibrate.refit import run_calibration_by_system
from lens_core.collect.loadtest import load_test
from lens_core.common.settings import load_config
from lens_core.decide.battery import (
    calibration_version,
    decision_metrics,
    decision_pairs,
    primary_comparisons,
)
from lens_core.decide.canary import (
    DECISIONS_SCHEMA,
    STEPS_SCHEMA,
    WINDOWS_SCHEMA,
    aa_equivalence_per_query,
    canary_config,
    run_ladder,
)
from lens_core.decide.canary_inputs import ArmRows, arm_rows, bucket_keys, stream_from_arms
from lens_core.decide.gates import (
    ece_gate,
    gate_config,
)
from lens_core.decide.promotion import evaluate_rules, sanity_battery, select_hero
from lens_core.judge.judging import LABEL_HIT_COLUMNS, label_hits
from lens_core.stats.compare import compare_many
from resources.data_source import LensDataSource
from resources.paging import PagerResource


@dg.asset(
    description="Paired comparisons per decision (each variant and the tail arm vs the baseline, and the A/A "
    "pair): Δ, bootstrap CI (B >= 2000), sign-flip randomisation p (B >= 10,000), Holm within each "
    "decision, n and the minimum detectable effect at 80% power, per metric and slice (SPEC §5).",
    owners=OWNERS_EVAL,
    kinds={"polars", "parquet", "numpy"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
)
def comparisons(context: dg.AssetExecutionContext, per_query: pl.DataFrame) -> pl.DataFrame:
    cfg = load_config()
    systems = current_systems(context)
    primary = primary_comparisons(systems)
    needed = {}
    for metric, _slice, eff in primary.values():
        needed[metric] = min(eff, needed.get(metric, eff))
    res = compare_many(
        per_query,
        decision_pairs(systems),
        decision_metrics(),  # the four, then the configured extra measures (issue 19)
        base_seed=cfg.run.seed,
        b_ci=cfg.run.ci_b,
        b_perm=cfg.run.perm_b,
        alpha=cfg.run.alpha,
        needed_effect=needed,
    )
    head = res.filter((pl.col("slice") == "all") & (pl.col("metric") == "ndcg_10")).select(
        "test", "delta", "ci_low", "ci_high", "p_value", "p_holm", "n", "mde", "status"
    )
    aa = head.filter(pl.col("test").str.ends_with("__aa"))
    context.add_output_metadata(
        table_metadata(
            res,
            headline=markdown_table(head),
            aa_noise_floor=dg.MetadataValue.md(markdown_table(aa)),
            # 64-bit seeds as text: a JSON number above 2**53 is shown rounded
            seeds=dg.MetadataValue.json(
                {f"{c}->{t}": str(s) for c, t, s in res.select("control", "test", "seed").unique().iter_rows()}
            ),
        )
    )
    return res


@dg.multi_asset(
    outs={
        "calibration": dg.AssetOut(
            description="Isotonic calibration per (system, intent, language) on a qid-hash split with backoff; "
            "per-cell ECE, adaptive and debiased ECE, Brier, merged-bin share and the noise floor "
            "(status pass | fail | insufficient). Exports and reliability diagrams in calibration/.",
            owners=OWNERS_CAL,
            kinds={"polars", "parquet", "sklearn"},
            group_name=GROUP,
        ),
        "calibration_parity": dg.AssetOut(
            description="Calibrator export parity: JSON breakpoints vs the in-memory sklearn model "
            "(max|Δ| <= 1e-6, |ΔECE| <= 1e-4).",
            owners=OWNERS_CAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
    },
    partitions_def=weekly_partitions,
)
def calibration(context: dg.AssetExecutionContext, hits: pl.LazyFrame, agg: pl.DataFrame, qrels: pl.DataFrame):
    cfg = load_config()
    out_dir = calibration_dir(context.partition_key)
    # Only this run's exports and plots: an earlier run of the week may have had other systems,
    # and the bundle copies the whole directory (issue 18).
    shutil.rmtree(out_dir, ignore_errors=True)
    gate = gate_config("ece").threshold
    # the A/A twin runs its baseline's configuration: it shares the baseline's calibrators (issue 17)
    systems = current_systems(context)
    ingested = set(agg.get_column("system").unique().to_list())
    shared = {s.name: systems[0].name for s in systems if s.pack == "aa" and s.name in ingested}
    labelled_n = 0

    def labels_of(system: str) -> pl.DataFrame:
        # one system's hits at a time (issue 22): memory follows the largest system, not the week
        nonlocal labelled_n
        one = label_hits(
            hits.filter(pl.col("system") == system).collect(), agg.filter(pl.col("system") == system), qrels
        )
        labelled_n += one.height
        context.log.info(f"calibration: {system} ({one.height} labelled hits)")
        return one

    run = run_calibration_by_system(
        sorted(ingested),
        labels_of,
        out_dir,
        seed=cfg.run.seed,
        gate=gate,
        min_labels=cfg.calibration.min_labels,
        shared=shared,
    )
    status = run.report.group_by("status").len().sort("status")
    cells = run.report.select("system", "intent", "language", "level", "n_eval", "ece", "noise_floor", "status")
    yield dg.Output(
        run.report,
        output_name="calibration",
        metadata=table_metadata(
            run.report,
            headline=markdown_table(status),
            cells=dg.MetadataValue.md(markdown_table(cells, max_rows=40)),
            reliability=dg.MetadataValue.md(pngs_markdown(run.system_pngs)),
            directory=dg.MetadataValue.path(str(out_dir)),
            labelled_hits=labelled_n,
            ece_gate=gate,
        ),
    )
    worst = run.parity["max_abs_diff"].max() if run.parity.height else None
    yield dg.Output(
        run.parity,
        output_name="calibration_parity",
        metadata=table_metadata(
            run.parity,
            headline=f"max |Δ| = {worst:.2e} over {run.parity.height} calibrators"
            if worst is not None
            else "no calibrators",
        ),
    )


QPS_SCHEMA = {
    "system": pl.String,
    "qps_at_sla": pl.Float64,
    "sla_ms": pl.Float64,
    "requests": pl.Int64,
    "stopped": pl.String,
    "rates": pl.String,
    # issue 17: every arm measured in ONE interleaved load test
    "lowest_rate": pl.Float64,
    "grid": pl.String,
    "seed": pl.Int64,
    "load_test_arms": pl.String,
}


@dg.asset(
    description="QPS@SLA (SPEC §4): the highest offered query rate at which client p99 stays <= SLA_MS, from a "
    "bounded open-loop load test against the endpoint (bounded in requests and time; it stops by itself). The "
    "baseline and every arm with a `qps` promotion rule (the tail-taming arm) are measured in ONE load test, "
    "their requests interleaved in a seeded order, each arm at every offered rate (issue 17); an arm that "
    "sustains no rate gets the grid extended downward to `load_test.min_rate`. Not measured on the simulator.",
    owners=OWNERS_CORE,
    kinds={"python", "http"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
    # after the heavy steps (issue 22's step processes would otherwise run calibration or the
    # comparisons beside the load test on the same cores: its QPS figures would share the CPU)
    deps=["raw_runs", "calibration", "comparisons", "scores"],
)
def qps_at_sla(
    context: dg.AssetExecutionContext, lens_source: LensDataSource, query_suites: pl.DataFrame
) -> pl.DataFrame:

    systems = current_systems(context)
    cfg_all = load_config()
    qps_packs = {p for p, spec in cfg_all.promotion.items() if any(r.kind == "qps" for r in spec.rules)}
    arms = [systems[0]] + [s for s in systems[1:] if s.pack in qps_packs]
    src = lens_source.resolved_source()
    if src == "sim":
        context.add_output_metadata({"measured": False, "reason": "DATA_SOURCE=sim has no endpoint to load"})
        return pl.DataFrame(schema=QPS_SCHEMA)
    cfg = cfg_all.load_test
    seed = cfg.seed if cfg.seed is not None else int(cfg_all.run.seed or 0)
    sample = query_suites.sort("qid").head(cfg.queries)
    by_name = {s.name: s for s in arms}
    res = load_test(
        lambda name: lens_source.system_client(by_name[name]),
        sample,
        list(by_name),
        sla_ms=lens_source.resolved_sla_ms(),
        rates=cfg.rates,
        duration_s=cfg.duration_s,
        max_requests=cfg.max_requests,
        max_total_s=cfg.max_total_s,
        min_requests=cfg.min_requests,
        min_rate=cfg.min_rate,
        max_extend_s=cfg.max_extend_s,
        seed=seed,
        extra={s.name: s.params for s in arms},
    )
    rows = []
    for name, arm in res["arms"].items():
        rows.append(
            {
                "system": name,
                "qps_at_sla": float(arm["qps_at_sla"]),
                "sla_ms": float(res["sla_ms"]),
                "requests": int(arm["requests"]),
                "stopped": str(res["stopped"]),
                "rates": json.dumps(arm["table"], default=str),
                "lowest_rate": arm["lowest_rate"],
                "grid": json.dumps(res["grid"]),
                "seed": int(res["seed"]),
                "load_test_arms": ",".join(by_name),
            }
        )
        sustained = f"{arm['qps_at_sla']:g}" if arm["sustained"] else f"0 (no rate down to {arm['lowest_rate']} qps)"
        context.log.info(f"{name}: QPS@{res['sla_ms']:g}ms = {sustained} ({res['stopped']})")
    df = pl.DataFrame(rows, schema=QPS_SCHEMA)
    context.add_output_metadata(
        table_metadata(
            df,
            headline=markdown_table(df.drop("rates")),
            measured=True,
            interleaved=len(arms) > 1,
            seed=int(res["seed"]),
            grid=dg.MetadataValue.json(res["grid"]),
            extended=dg.MetadataValue.json(res["extended"]),
        )
    )
    return df


@dg.multi_asset(
    outs={
        "promotion_rules": dg.AssetOut(
            description="Every hero-pack promotion rule (SPEC §8) for every variant, with value, threshold and "
            "pass/fail.",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
        "heroes": dg.AssetOut(
            description="Hero per pack: the best variant by nDCG@10 that passes every rule and the sanity battery, "
            "or none with the reason; config lock (cfg_hash, calibration version).",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
    },
    partitions_def=weekly_partitions,
)
def hero_decisions(
    context: dg.AssetExecutionContext,
    scores: pl.DataFrame,
    comparisons: pl.DataFrame,
    agg: pl.DataFrame,
    hits: pl.LazyFrame,
    calibration: pl.DataFrame,
    ground_truth: pl.DataFrame,
    query_suites: pl.DataFrame,
    per_query: pl.DataFrame,
    qps_at_sla: pl.DataFrame,
):
    systems = current_systems(context)
    base = systems[0]
    ece = ece_gate(calibration)
    by_pack: dict[str, list] = {}
    for s in systems[1:]:
        if s.pack != "aa":
            by_pack.setdefault(s.pack, []).append(s)
    qps = dict(zip(qps_at_sla["system"].to_list(), qps_at_sla["qps_at_sla"].to_list()))
    lowest = (
        dict(zip(qps_at_sla["system"].to_list(), qps_at_sla["lowest_rate"].to_list()))
        if "lowest_rate" in qps_at_sla.columns
        else None
    )
    rules = (
        pl.concat(
            [
                evaluate_rules(
                    pack, vs, base, scores, comparisons, agg, ece, qps, per_query=per_query, qps_lowest=lowest
                )
                for pack, vs in by_pack.items()
            ],
            how="vertical",
        )
        if by_pack
        else pl.DataFrame()
    )
    sanity = sanity_battery(per_query, hits, ground_truth, query_suites, base.name, [s.name for s in systems[1:]])
    sanity_ok = dict(zip(sanity["system"].to_list(), sanity["passed"].to_list()))
    # the A/A as an equivalence test (TOST against the margins, issue 17), not a point null
    twin = next((s.name for s in systems if s.pack == "aa"), None)
    aa = aa_equivalence_per_query(per_query, base.name, twin, canary_config()) if twin else None
    aa_broken = aa is not None and not aa.equivalent
    cal_version = calibration_version(calibration)
    rows = []
    for pack in by_pack:
        d = select_hero(pack, rules.filter(pl.col("pack") == pack), scores, sanity_ok)
        if aa_broken and d.hero:
            d.reason = f"blocked: {aa.reason}; the setup is broken; was {d.hero}"
            d.hero, d.cfg_hash, d.ndcg_10 = None, None, None
        rows.append({**d.as_dict(), "calibration_version": cal_version if d.hero else None})
    heroes = pl.DataFrame(
        rows,
        schema={
            "pack": pl.String,
            "hero": pl.String,
            "cfg_hash": pl.String,
            "ndcg_10": pl.Float64,
            "reason": pl.String,
            "calibration_version": pl.String,
        },
    )
    yield dg.Output(
        rules,
        output_name="promotion_rules",
        metadata=table_metadata(
            rules,
            headline=markdown_table(
                rules.group_by("pack", "system")
                .agg(pl.col("passed").sum().alias("passed"), pl.len().alias("rules"))
                .sort("pack", "system")
            ),
        ),
    )
    yield dg.Output(
        heroes,
        output_name="heroes",
        metadata=table_metadata(
            heroes,
            headline=markdown_table(heroes),
            sanity=dg.MetadataValue.md(markdown_table(sanity)),
            aa_equivalent=None if aa is None else bool(aa.equivalent),
            aa_verdict=aa.reason if aa else "no A/A twin",
        ),
    )


@dg.multi_asset(
    outs={
        "canary_steps": dg.AssetOut(
            description="Canary ladder steps (A/A, then 5/25/50/100% by repo bucket) per test "
            "arm, with the decision at each step (SPEC §9).",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
        "canary_windows": dg.AssetOut(
            description="Every judged window: calibrator p99, adaptive ECE (with noise floor), "
            "confidence shift, SLA-Recall@50 Δ, red/green.",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
        "canary_decisions": dg.AssetOut(
            description="Every ladder decision: advance, hold, revert (two consecutive red "
            "windows; the owner is paged) or complete.",
            owners=OWNERS_EVAL,
            kinds={"polars", "parquet"},
            group_name=GROUP,
        ),
    },
    partitions_def=weekly_partitions,
)
def canary(
    context: dg.AssetExecutionContext,
    pager: PagerResource,
    per_query: pl.DataFrame,
    hits: pl.LazyFrame,
    agg: pl.DataFrame,
    qrels: pl.DataFrame,
    ground_truth: pl.DataFrame,
    heroes: pl.DataFrame,
):

    systems = current_systems(context)
    base = systems[0].name
    aa = next(s.name for s in systems if s.pack == "aa")
    # the tail arm, each pack's hero, and every system declared to run the canary on its own
    # (issue 17: e.g. the reference engine's planted regression, which no pack promotes)
    tests = (
        [s.name for s in systems if s.pack == "tail_taming"]
        + heroes["hero"].drop_nulls().to_list()
        + [s.name for s in systems if s.canary]
    )
    cals = CalibratorSet.from_json((calibration_dir(context.partition_key) / "index.json").read_text())
    # only the systems the canary replays (the baseline, its A/A twin and the tests), each
    # labelled from its own hits when first needed and kept as its per-query part of the
    # stream: memory follows one system's hits, not every arm's (issue 22)
    keys = bucket_keys(ground_truth)
    arms: dict[str, ArmRows] = {}

    def arm(system: str) -> ArmRows:
        if system not in arms:
            labelled = label_hits(
                hits.filter(pl.col("system") == system).select(LABEL_HIT_COLUMNS).collect(),
                agg.filter(pl.col("system") == system),
                qrels,
            )
            arms[system] = arm_rows(per_query, labelled, cals, system, keys)
        return arms[system]

    cfg = canary_config()
    frames = {"steps": [], "windows": [], "decisions": []}
    summary = []
    for test in dict.fromkeys(tests):
        stream = stream_from_arms(arm(base), arm(test), arm(aa))

        def page(text: str, details: dict, _test=test) -> None:
            pager.trigger(
                f"lens:canary:{context.partition_key}:{_test}",
                f"canary {_test}: {text}",
                "P1",
                component="canary",
                owners=OWNERS_EVAL,
                details=details,
            )

        try:
            res = run_ladder(stream, cfg, page=page)
        except ValueError as e:
            # Too little traffic to judge even the A/A windows: the ladder does not start.
            reason = f"canary not started: {e}"
            context.log.warning(f"{test}: {reason}")
            frames["steps"].append(
                pl.DataFrame(
                    [{"phase": "aa", "step": 0, "pct": cfg.aa_pct, "decision": "hold", "reason": reason, "test": test}]
                )
            )
            frames["decisions"].append(
                pl.DataFrame([{"phase": "aa", "step": 0, "action": "hold", "reason": reason, "test": test}])
            )
            summary.append({"test": test, "aa_passed": None, "final_pct": 0, "reverted": False, "completed": False})
            continue
        for name in frames:
            frames[name].append(getattr(res, name).with_columns(pl.lit(test).alias("test")))
        summary.append(
            {
                "test": test,
                "aa_passed": res.aa_passed,
                "final_pct": res.final_pct,
                "reverted": res.reverted,
                "completed": res.completed,
            }
        )

    schemas = {"steps": STEPS_SCHEMA, "windows": WINDOWS_SCHEMA, "decisions": DECISIONS_SCHEMA}
    out = {
        k: pl.concat([pl.DataFrame(schema={**schemas[k], "test": pl.String})] + v, how="diagonal_relaxed")
        for k, v in frames.items()
    }
    head = markdown_table(pl.DataFrame(summary)) if summary else "no test arm"
    yield dg.Output(out["steps"], output_name="canary_steps", metadata=table_metadata(out["steps"], headline=head))
    yield dg.Output(out["windows"], output_name="canary_windows", metadata=table_metadata(out["windows"]))
    yield dg.Output(
        out["decisions"],
        output_name="canary_decisions",
        metadata=table_metadata(out["decisions"], preview=out["decisions"]),
    )


decision_assets = [comparisons, calibration, qps_at_sla, hero_decisions, canary]
