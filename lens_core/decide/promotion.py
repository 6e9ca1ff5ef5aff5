"""Hero-pack promotion (SPEC §8): per-pack rules vs the baseline, hero selection, the sanity
battery and the config lock. Pure: tables in, tables out.

A pack's hero is its best variant by nDCG@10 (span-only, slice `all`) among the variants that
pass every rule of the pack; otherwise the pack has no hero and the reason says which rules
failed for the best variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from lens_core.common.contracts import SLICE_ALL
from lens_core.common.settings import load_config
from lens_core.common.systems import SystemConfig
from lens_core.decide.gates import GateResult
from lens_core.measures.registry import check_config
from lens_core.stats.bootstrap import paired_delta_ci

RULES_SCHEMA = {
    "pack": pl.String,
    "system": pl.String,
    "cfg_hash": pl.String,
    "rule": pl.String,
    "value": pl.Float64,
    "threshold": pl.String,
    "passed": pl.Boolean,
    "detail": pl.String,
}
DIM = 384  # embedding dimension of the dense arm (bytes per candidate = DIM × 4)


def promotion_config() -> dict[str, Any]:
    """The `promotion:` and `sanity:` blocks as plain mappings (typed: `resolved_promotion()`),
    every `metric:` resolved to its score metric."""
    cfg = load_config()
    return {
        "promotion": {pack: spec.model_dump(exclude_none=True) for pack, spec in resolved_promotion().items()},
        "sanity": cfg.sanity.model_dump(),
    }


def resolved_promotion() -> dict[str, Any]:
    """`promotion:` of the config with every `metric:` (a primary comparison's, a rule's)
    resolved through the measure registry (issue 19): a registry name (`nDCG@10`) becomes the
    column it names (`ndcg_10`), so a rule written either way is the same rule; a measure the
    registry does not know, or one not among `measures:`, is refused naming the key and the file
    (`registry.check_config`)."""
    cfg = load_config()
    cols = check_config(cfg)
    out = {}
    for pack, spec in cfg.promotion.items():
        primary = spec.primary.model_copy(update={"metric": cols[("promotion", pack, "primary", "metric")]})
        rules = [
            r.model_copy(update={"metric": cols[loc]})
            if (loc := ("promotion", pack, "rules", i, "metric")) in cols
            else r
            for i, r in enumerate(spec.rules)
        ]
        out[pack] = spec.model_copy(update={"primary": primary, "rules": rules})
    return out


def _score(scores: pl.DataFrame, system: str, metric: str, slice_: str = SLICE_ALL) -> float | None:
    r = scores.filter((pl.col("system") == system) & (pl.col("metric") == metric) & (pl.col("slice") == slice_))
    return None if r.height == 0 else float(r["mean"][0])


def upshift_share(agg: pl.DataFrame) -> dict[str, float]:
    """Share of answered queries whose results carry a dense (`sem`) hit: the router upshifted."""
    ok = agg.filter(pl.col("error").is_null())
    s = ok.group_by("system").agg((pl.col("why_mix_sem") > 0).mean().alias("share"))
    return dict(zip(s["system"].to_list(), s["share"].to_list()))


def dense_p95(agg: pl.DataFrame) -> dict[str, float]:
    """p95 latency over upshifted queries (the dense path)."""
    s = (
        agg.filter(pl.col("error").is_null() & (pl.col("why_mix_sem") > 0))
        .group_by("system")
        .agg(pl.col("lat_ms").quantile(0.95, interpolation="linear").alias("p95"))
    )
    return dict(zip(s["system"].to_list(), s["p95"].to_list()))


def dense_memory_bytes(system: SystemConfig) -> float:
    """Per-query working set of the dense path: the ef_search candidate heap plus the
    refine_topk vectors re-ranked exactly (bytes)."""
    return float((system.ef_search + system.refine_topk) * DIM * 4)


def _rule(
    pack: str, system: SystemConfig, rule: str, value: float | None, threshold: str, passed: bool, detail: str
) -> dict[str, Any]:
    return {
        "pack": pack,
        "system": system.name,
        "cfg_hash": system.cfg_hash,
        "rule": rule,
        "value": value,
        "threshold": threshold,
        "passed": bool(passed),
        "detail": detail,
    }


def _judge_vs_baseline(bound: float, d: float, ci: tuple[float, float, float] | None) -> tuple[bool, str]:
    """A vs-baseline rule `Δ <= bound` judged on the paired CI (issue 17). A rule that demands an
    improvement (bound < 0) passes only when it is shown: the CI's upper end <= bound. A rule that
    guards against a regression (bound >= 0) fails only when the regression is shown: the CI's
    lower end > bound (identical systems differ by noise, and a point estimate would fail half
    of them). Without a CI the point estimate decides."""
    if ci is None:
        return d <= bound, "point estimate (no per-query CI)"
    _, lo, hi = ci
    if bound < 0:
        return hi <= bound, f"CI [{lo:+.4g}, {hi:+.4g}]: improvement {'shown' if hi <= bound else 'not shown'}"
    return not lo > bound, f"CI [{lo:+.4g}, {hi:+.4g}]: {'worse beyond the bound' if lo > bound else 'not shown worse'}"


def qps_rule(
    pack: str,
    variant: SystemConfig,
    baseline: str,
    min_rel: float,
    qps: dict[str, float] | None,
    lowest: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The `qps` rule (issue 17): QPS@SLA Δ% of `variant` vs the baseline, both measured in the
    same interleaved load test. A baseline that sustains no rate (QPS@SLA 0, after the grid was
    extended downward to `lowest[baseline]`, default the configured floor `load_test.min_rate`)
    makes Δ% undefined; that is said, never folded into a silent fail:

    * the variant sustains a rate where the baseline sustains none: an improvement, PASS
      (value None, the detail names both);
    * neither sustains any rate: no improvement shown, FAIL with that reason;
    * not measured (no endpoint): FAIL, "not measured"."""
    name = f"QPS@SLA Δ% >= {min_rel:+.0%}"
    threshold = f">= {min_rel}"
    a, base = (qps or {}).get(variant.name), (qps or {}).get(baseline)
    if a is None or base is None:
        return _rule(
            pack, variant, name, None, threshold, False, "QPS@SLA not measured (needs a load test against an endpoint)"
        )
    if base <= 0:
        floor = (lowest or {}).get(baseline)
        if floor is None:
            floor = load_config().load_test.min_rate
        if a > 0:
            return _rule(
                pack,
                variant,
                name,
                None,
                threshold,
                True,
                f"baseline sustains no rate down to {floor:g} qps; test sustains {a:g} qps: Δ% from 0 is "
                "undefined; sustaining a rate where the baseline sustains none is an improvement (pass)",
            )
        low_a = (lowest or {}).get(variant.name, floor)
        return _rule(
            pack,
            variant,
            name,
            None,
            threshold,
            False,
            f"neither sustains any rate: baseline none down to {floor:g} qps, test none down to {low_a:g} qps: "
            "Δ% from 0 is undefined and no improvement is shown (fail)",
        )
    rel = (a - base) / base
    return _rule(pack, variant, name, rel, threshold, rel >= min_rel, f"{a:.1f} vs {base:.1f} qps")


def evaluate_rules(
    pack: str,
    variants: list[SystemConfig],
    baseline: SystemConfig,
    scores: pl.DataFrame,
    comparisons: pl.DataFrame,
    agg: pl.DataFrame,
    gates: list[GateResult],
    qps: dict[str, float] | None = None,
    per_query: pl.DataFrame | None = None,
    qps_lowest: dict[str, float] | None = None,
) -> pl.DataFrame:
    """Each rule of `pack` for each variant vs the baseline. With `per_query`, the vs-baseline
    rules (`latency` / `vs_baseline` kinds) on lat_p95, lat_p99, cpu_ms and file_credit are
    judged on the paired bootstrap CI of the Δ (see `_judge_vs_baseline`)."""
    run = load_config().run
    spec = resolved_promotion().get(pack)
    if spec is None:
        raise KeyError(f"no promotion rules for pack {pack!r} under `promotion:` in the config")
    shares = upshift_share(agg)
    dp95 = dense_p95(agg)
    rows: list[dict[str, Any]] = []
    b = baseline.name
    for v in variants:
        for r in spec.rules:
            kind = r.kind
            if kind == "delta":
                c = comparisons.filter(
                    (pl.col("test") == v.name)
                    & (pl.col("control") == b)
                    & (pl.col("metric") == r.metric)
                    & (pl.col("slice") == r.slice)
                )
                name = f"Δ{r.metric}[{r.slice}] >= {r.min:+g}"
                if c.height == 0:
                    rows.append(_rule(pack, v, name, None, f">= {r.min}", False, "no comparison for this slice"))
                    continue
                row = c.row(0, named=True)
                n_ok = row["n"] >= r.min_n
                d = row["delta"]
                hi = row.get("ci_high")
                if r.min > 0 or hi is None:
                    # an improvement the pack demands: the point estimate must reach it (the
                    # power gate says whether the comparison could see it)
                    ok = d is not None and d >= r.min and n_ok
                else:
                    # a guard against a regression (issue 17): fails when the regression is
                    # shown (the CI lies below the bound), not when noise moves the estimate
                    ok = d is not None and hi >= r.min and n_ok
                detail = (
                    f"Δ {d:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], p_holm {row['p_holm']:.3g}, n {row['n']}"
                    if d is not None and row["ci_low"] is not None
                    else f"{row.get('status')}: {row.get('reason')}"
                )
                if not n_ok:
                    detail += f" (needs n >= {r.min_n})"
                rows.append(_rule(pack, v, name, d, f">= {r.min}", ok, detail))
            elif kind in ("latency", "vs_baseline"):
                a, base = _score(scores, v.name, r.metric), _score(scores, b, r.metric)
                if a is None or base is None:
                    rows.append(_rule(pack, v, f"{r.metric} vs baseline", None, "", False, "metric missing"))
                    continue
                relative = r.max_rel is not None
                bound = float(r.max_rel if relative else r.max_delta)
                d = ((a - base) / base if base else float("inf")) if relative else a - base
                ci = paired_delta_ci(
                    per_query, v.name, b, r.metric, relative=relative, b=run.ci_b, seed=run.seed, alpha=run.alpha
                )
                ok, how = _judge_vs_baseline(bound, d, ci)
                name = f"{r.metric} Δ% <= {bound:+.0%}" if relative else f"{r.metric} Δ <= {bound:+g}"
                rows.append(_rule(pack, v, name, d, f"<= {bound}", ok, f"{a:.4g} vs {base:.4g} (Δ {d:+.4g}); {how}"))
            elif kind == "value":
                a = _score(scores, v.name, r.metric)
                rows.append(
                    _rule(
                        pack,
                        v,
                        f"{r.metric} <= {r.max:g}",
                        a,
                        f"<= {r.max}",
                        a is not None and a <= r.max,
                        "metric missing" if a is None else f"{a:.4f}",
                    )
                )
            elif kind == "upshift":
                s = shares.get(v.name)
                lo, hi = r.target - r.tol, r.target + r.tol
                rows.append(
                    _rule(
                        pack,
                        v,
                        f"upshift share in {lo:.0%}–{hi:.0%}",
                        s,
                        f"{lo}..{hi}",
                        s is not None and lo <= s <= hi,
                        "no answered queries" if s is None else f"{s:.3f}",
                    )
                )
            elif kind == "dense_p95":
                a, base = dp95.get(v.name), dp95.get(b)
                rows.append(
                    _rule(
                        pack,
                        v,
                        "dense-path p95 improves",
                        None if a is None or base is None else a - base,
                        "< 0",
                        a is not None and base is not None and a < base,
                        "no upshifted queries" if a is None or base is None else f"{a:.2f} vs {base:.2f} ms",
                    )
                )
            elif kind == "memory":
                a, base = dense_memory_bytes(v), dense_memory_bytes(baseline)
                rel = (a - base) / base
                rows.append(
                    _rule(
                        pack,
                        v,
                        f"dense memory Δ% <= {r.max_rel:+.0%}",
                        rel,
                        f"<= {r.max_rel}",
                        rel <= r.max_rel,
                        f"{a / 1024:.0f} KiB vs {base / 1024:.0f} KiB per query",
                    )
                )
            elif kind == "gate":
                mine = [g for g in gates if g.name == r.gate and g.subject == v.name]
                ok = bool(mine) and all(g.passed for g in mine)
                detail = "; ".join(f"{g.status}: {g.reason}" for g in mine) or f"gate {r.gate} not evaluated"
                rows.append(_rule(pack, v, f"gate {r.gate}", mine[0].value if mine else None, "pass", ok, detail))
            elif kind == "qps":
                rows.append(qps_rule(pack, v, b, r.min_rel, qps, qps_lowest))
            else:
                raise ValueError(f"pack {pack}: unknown rule kind {kind!r}")
    return pl.DataFrame(rows, schema=RULES_SCHEMA)


@dataclass
class HeroDecision:
    pack: str
    hero: str | None
    cfg_hash: str | None
    ndcg_10: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "pack": self.pack,
            "hero": self.hero,
            "cfg_hash": self.cfg_hash,
            "ndcg_10": self.ndcg_10,
            "reason": self.reason,
        }


def select_hero(
    pack: str, rules: pl.DataFrame, scores: pl.DataFrame, sanity: dict[str, bool] | None = None
) -> HeroDecision:
    """Best passing variant by nDCG@10 (slice all), or none with the reason."""
    per = rules.group_by("system", "cfg_hash").agg(
        pl.col("passed").all().alias("ok"), pl.col("rule").filter(~pl.col("passed")).alias("failed")
    )
    nd = scores.filter((pl.col("metric") == "ndcg_10") & (pl.col("slice") == SLICE_ALL)).select(
        "system", pl.col("mean").alias("ndcg_10")
    )
    per = per.join(nd, on="system", how="left").sort("ndcg_10", descending=True, nulls_last=True)
    if per.height == 0:
        return HeroDecision(pack, None, None, None, "no variants evaluated")
    sanity = sanity or {}
    for r in per.iter_rows(named=True):
        if r["ok"] and sanity.get(r["system"], True):
            return HeroDecision(
                pack,
                r["system"],
                r["cfg_hash"],
                r["ndcg_10"],
                f"best passing variant by nDCG@10 ({r['ndcg_10']:.4f}); all {rules.filter(pl.col('system') == r['system']).height} rules pass",
            )
    best = per.row(0, named=True)
    why = "; ".join(best["failed"][:4]) if best["failed"] else "sanity battery failed"
    return HeroDecision(
        pack, None, None, None, f"no variant passes every rule; best by nDCG@10 {best['system']} fails: {why}"
    )


def sanity_battery(
    per_query: pl.DataFrame,
    hits: pl.DataFrame | pl.LazyFrame,
    ground_truth: pl.DataFrame,
    queries: pl.DataFrame,
    baseline: str,
    candidates: list[str],
) -> pl.DataFrame:
    """Oracle queries with a known answer must be found.

    Oracles: identifier (else any) queries whose primary span (rel 3) the baseline returns at
    rank 1 — answerable for sure. A candidate passes when it returns that span (same repo,
    path, lines) in its top k for at least `min_found` of the oracles.
    """
    cfg = load_config().sanity
    n, k, min_found = cfg.queries, cfg.k, cfg.min_found
    keys = ["qid", "repo", "path", "start_line", "end_line"]
    primary = ground_truth.filter(pl.col("rel") == ground_truth["rel"].max()).select(keys)
    ident = queries.filter(pl.col("intent") == "identifier")["qid"]
    pool = ident if ident.len() else queries["qid"]
    hits = hits.lazy()  # a scan of the hits file reads only each system's top k (issue 22)
    base_top = hits.filter((pl.col("system") == baseline) & (pl.col("rank") == 1)).select(keys).collect()
    oracles = (
        primary.join(base_top, on=keys, how="semi").filter(pl.col("qid").is_in(pool.implode())).sort("qid").head(n)
    )
    rows = []
    for cand in candidates:
        found = (
            hits.filter((pl.col("system") == cand) & (pl.col("rank") <= k))
            .select(keys)
            .join(oracles.lazy(), on=keys, how="semi")
            .collect()["qid"]
            .n_unique()
        )
        share = found / oracles.height if oracles.height else 0.0
        rows.append(
            {
                "system": cand,
                "oracles": oracles.height,
                "found": found,
                "share": share,
                "passed": oracles.height > 0 and share >= min_found,
            }
        )
    return pl.DataFrame(
        rows,
        schema={"system": pl.String, "oracles": pl.Int64, "found": pl.Int64, "share": pl.Float64, "passed": pl.Boolean},
    )
