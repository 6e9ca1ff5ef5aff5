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
    """The `promotion:` and `sanity:` blocks as plain mappings (typed: `load_config().promotion`)."""
    cfg = load_config()
    return {
        "promotion": {pack: spec.model_dump(exclude_none=True) for pack, spec in cfg.promotion.items()},
        "sanity": cfg.sanity.model_dump(),
    }


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


def evaluate_rules(
    pack: str,
    variants: list[SystemConfig],
    baseline: SystemConfig,
    scores: pl.DataFrame,
    comparisons: pl.DataFrame,
    agg: pl.DataFrame,
    gates: list[GateResult],
    qps: dict[str, float] | None = None,
) -> pl.DataFrame:
    spec = load_config().promotion.get(pack)
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
                ok = d is not None and d >= r.min and n_ok
                detail = (
                    f"Δ {d:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], p_holm {row['p_holm']:.3g}, n {row['n']}"
                    if d is not None and row["ci_low"] is not None
                    else f"{row.get('status')}: {row.get('reason')}"
                )
                if not n_ok:
                    detail += f" (needs n >= {r.min_n})"
                rows.append(_rule(pack, v, name, d, f">= {r.min}", ok, detail))
            elif kind == "latency":
                a, base = _score(scores, v.name, r.metric), _score(scores, b, r.metric)
                if a is None or base is None:
                    rows.append(_rule(pack, v, f"{r.metric} vs baseline", None, "", False, "metric missing"))
                    continue
                if r.max_rel is not None:
                    rel = (a - base) / base if base else float("inf")
                    rows.append(
                        _rule(
                            pack,
                            v,
                            f"{r.metric} Δ% <= {r.max_rel:+.0%}",
                            rel,
                            f"<= {r.max_rel}",
                            rel <= r.max_rel,
                            f"{a:.2f} vs {base:.2f}",
                        )
                    )
                else:
                    d = a - base
                    rows.append(
                        _rule(
                            pack,
                            v,
                            f"{r.metric} Δ <= {r.max_delta:+g}",
                            d,
                            f"<= {r.max_delta}",
                            d <= r.max_delta,
                            f"{a:.2f} vs {base:.2f}",
                        )
                    )
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
                a, base = (qps or {}).get(v.name), (qps or {}).get(b)
                if a is None or base is None or base <= 0:
                    rows.append(
                        _rule(
                            pack,
                            v,
                            f"QPS@SLA Δ% >= {r.min_rel:+.0%}",
                            None,
                            f">= {r.min_rel}",
                            False,
                            "QPS@SLA not measured (needs a load test against an endpoint)",
                        )
                    )
                else:
                    rel = (a - base) / base
                    rows.append(
                        _rule(
                            pack,
                            v,
                            f"QPS@SLA Δ% >= {r.min_rel:+.0%}",
                            rel,
                            f">= {r.min_rel}",
                            rel >= r.min_rel,
                            f"{a:.1f} vs {base:.1f} qps",
                        )
                    )
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
    hits: pl.DataFrame,
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
    base_top = hits.filter((pl.col("system") == baseline) & (pl.col("rank") == 1)).select(keys)
    oracles = (
        primary.join(base_top, on=keys, how="semi").filter(pl.col("qid").is_in(pool.implode())).sort("qid").head(n)
    )
    rows = []
    for cand in candidates:
        found = (
            hits.filter((pl.col("system") == cand) & (pl.col("rank") <= k))
            .select(keys)
            .join(oracles, on=keys, how="semi")["qid"]
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
