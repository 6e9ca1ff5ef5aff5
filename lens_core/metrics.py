"""Span-only credit and per-query metrics (SPEC §4), vectorised with polars and numpy.

Credit rules (SPEC §4):
- a hit earns the gain of a relevant span of the same repo and path when it lies inside the
  span or their line IoU is >= 0.5 (inclusive line ranges);
- each relevant span is credited at most once per ranking, to the first hit (in rank order)
  that earns it; a hit matching several uncredited spans earns the highest gain among them.
- file credit: the same, with "same repo and path" as the only condition.

The greedy assignment is exact. Hits that match at most one span (nearly all of them) are
resolved with vectorised group-bys (the first hit of each span wins); only the rankings where
some hit matches two or more spans go through the sequential greedy, a few rows each.

Metric conventions follow trec_eval: nDCG@10 = `ndcg_cut.10` (gain = rel, discount
log2(rank + 1), ideal from all relevant spans of the query cut at 10), Recall@50 = relevant
spans credited in the top 50 / relevant spans, MRR@10 = 1/rank of the first credited hit in
the top 10, Success@k = any credited hit in the top k. A query with no relevant span scores 0.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from lens_core.contracts import PER_QUERY_METRICS

RUN_KEYS = ["run_id", "system", "qid"]
SPAN_KEYS = ["qid", "repo", "path", "start_line", "end_line"]
MAX_RANK = 50


def relevant_spans(qrels: pl.DataFrame) -> pl.DataFrame:
    """Relevant spans (rel > 0), one row per distinct span with its max rel and a span id."""
    return (
        qrels.filter(pl.col("rel") > 0)
        .group_by(SPAN_KEYS)
        .agg(pl.col("rel").max())
        .sort(SPAN_KEYS)
        .with_row_index("span_id")
        .with_columns(pl.col("span_id").cast(pl.Int64), pl.col("rel").cast(pl.Int64))
    )


def _match_pairs(hits: pl.DataFrame, spans: pl.DataFrame, file_only: bool) -> pl.DataFrame:
    """Candidate (hit, span) pairs that earn credit, with the span's gain."""
    pairs = hits.join(
        spans.rename({"start_line": "s_start", "end_line": "s_end"}),
        on=["qid", "repo", "path"],
        how="inner",
    )
    if file_only:
        return pairs.select(RUN_KEYS + ["rank", "span_id", "rel"])
    inter = (pl.min_horizontal("end_line", "s_end") - pl.max_horizontal("start_line", "s_start") + 1).clip(0)
    union = (pl.col("end_line") - pl.col("start_line") + 1) + (pl.col("s_end") - pl.col("s_start") + 1) - inter
    inside = (pl.col("start_line") >= pl.col("s_start")) & (pl.col("end_line") <= pl.col("s_end"))
    return (
        pairs.with_columns(inter.alias("_inter"), union.alias("_union"), inside.alias("_inside"))
        .filter(pl.col("_inside") | (pl.col("_inter") * 2 >= pl.col("_union")))
        .select(RUN_KEYS + ["rank", "span_id", "rel"])
    )


def _greedy(ranks: np.ndarray, span_ids: np.ndarray, rels: np.ndarray) -> dict[int, int]:
    """Exact greedy for one ranking: rank -> gain. Pairs are sorted by (rank, -rel, span)."""
    credited: set[int] = set()
    out: dict[int, int] = {}
    for r, s, g in zip(ranks.tolist(), span_ids.tolist(), rels.tolist()):
        if r in out or s in credited:
            continue
        credited.add(s)
        out[r] = g
    return out


def credit_hits(hits: pl.DataFrame, spans: pl.DataFrame, file_only: bool = False) -> pl.DataFrame:
    """Gain earned by each hit: (run_id, system, qid, rank, gain) for hits with gain > 0."""
    pairs = _match_pairs(hits, spans, file_only)
    if pairs.height == 0:
        return pl.DataFrame(schema={"run_id": pl.String, "system": pl.String, "qid": pl.String,
                                    "rank": pl.Int32, "gain": pl.Int64})
    n_match = pl.len().over(RUN_KEYS + ["rank"])
    multi_ranking = (n_match > 1).any().over(RUN_KEYS)
    pairs = pairs.with_columns(multi_ranking.alias("_multi"))
    simple = pairs.filter(~pl.col("_multi"))
    # Every hit matches one span here: the span goes to its first hit; that hit earns its rel.
    simple_credit = (
        simple.sort(RUN_KEYS + ["rank"])
        .group_by(RUN_KEYS + ["span_id"], maintain_order=True)
        .agg(pl.col("rank").first(), pl.col("rel").first().alias("gain"))
        .select(RUN_KEYS + ["rank", "gain"])
    )
    complex_ = pairs.filter(pl.col("_multi")).sort(
        RUN_KEYS + ["rank", "rel", "span_id"], descending=[False, False, False, False, True, False]
    )
    rows: list[tuple] = []
    if complex_.height:
        for key, grp in complex_.group_by(RUN_KEYS, maintain_order=True):
            got = _greedy(grp["rank"].to_numpy(), grp["span_id"].to_numpy(), grp["rel"].to_numpy())
            rows.extend((*key, r, g) for r, g in got.items())
    complex_credit = pl.DataFrame(
        rows, schema={"run_id": pl.String, "system": pl.String, "qid": pl.String,
                      "rank": pl.Int32, "gain": pl.Int64}, orient="row",
    )
    return pl.concat(
        [simple_credit.with_columns(pl.col("rank").cast(pl.Int32), pl.col("gain").cast(pl.Int64)),
         complex_credit],
        how="vertical",
    )


def ideal_dcg(spans: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    """(qid, idcg_10, n_rel) from the relevant spans of each query."""
    return (
        spans.sort(["qid", "rel"], descending=[False, True])
        .with_columns(pl.int_range(1, pl.len() + 1).over("qid").alias("_pos"))
        .group_by("qid")
        .agg(
            (pl.when(pl.col("_pos") <= k).then(pl.col("rel") / (pl.col("_pos") + 1).log(2)).otherwise(0.0))
            .sum().alias("idcg_10"),
            pl.len().alias("n_rel"),
        )
    )


def _judged(hits10: pl.DataFrame, qrels: pl.DataFrame, spans: pl.DataFrame) -> pl.DataFrame:
    """Per ranking: number of top-10 hits that are judged (match a relevant span, or are a
    judged span exactly)."""
    matched = _match_pairs(hits10, spans, file_only=False).select(RUN_KEYS + ["rank"]).unique()
    exact = hits10.join(qrels.select(SPAN_KEYS).unique(), on=SPAN_KEYS, how="inner").select(RUN_KEYS + ["rank"])
    return (
        pl.concat([matched, exact.with_columns(pl.col("rank").cast(matched.schema["rank"]))])
        .unique()
        .group_by(RUN_KEYS)
        .agg(pl.len().alias("judged_hits_10"))
    )


def per_query_metrics(agg: pl.DataFrame, hits: pl.DataFrame, qrels: pl.DataFrame,
                      queries: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per-query metrics for every (run_id, system, qid) of `agg` (SPEC §4).

    `agg` must hold one row per query of each system, failed ones included (they score 0).
    If `queries` is given, queries of the suite missing from a system's agg rows are added
    as failed (scoring 0, `failed` = 1) so nothing is silently dropped.
    Returns the bundle columns (`contracts.PER_QUERY_SCHEMA`) plus diagnostics:
    judged_10 (judged share of the top 10), n_hits_10, judged_hits_10, span_gain_10,
    file_gain_10, failed, within_sla, probes, cpu_ms.
    """
    base = agg.select(
        "run_id", "system", "qid", "suite", "intent", "language", "lat_ms", "within_sla",
        "probes", "cpu_ms", "error",
    )
    if queries is not None:
        grid = (
            agg.select("run_id", "system").unique()
            .join(queries.select("qid", "suite", "intent", "language"), how="cross")
        )
        missing = grid.join(base.select(RUN_KEYS), on=RUN_KEYS, how="anti")
        if missing.height:
            base = pl.concat([
                base,
                missing.with_columns(
                    pl.lit(None, pl.Float64).alias("lat_ms"), pl.lit(False).alias("within_sla"),
                    pl.lit(0, pl.Int32).alias("probes"), pl.lit(0.0).alias("cpu_ms"),
                    pl.lit("missing_from_run").alias("error"),
                ).select(base.columns),
            ], how="vertical_relaxed")

    spans = relevant_spans(qrels)
    h = hits.filter(pl.col("rank") <= MAX_RANK).select(RUN_KEYS + ["rank", "repo", "path", "start_line", "end_line", "in_sla"])
    credit_all = credit_hits(h, spans)
    credit_sla = credit_hits(h.filter(pl.col("in_sla")), spans)
    credit_file = credit_hits(h.filter(pl.col("rank") <= 10), spans, file_only=True)

    disc = (1.0 / (pl.col("rank") + 1).cast(pl.Float64).log(2))
    q_all = credit_all.group_by(RUN_KEYS).agg(
        (pl.when(pl.col("rank") <= 10).then(pl.col("gain") * disc).otherwise(0.0)).sum().alias("dcg_10"),
        (pl.col("rank") <= 50).sum().alias("ret_rel_50"),
        pl.col("rank").min().alias("first_rank"),
        (pl.when(pl.col("rank") <= 10).then(pl.col("gain")).otherwise(0)).sum().alias("span_gain_10"),
    )
    q_sla = credit_sla.group_by(RUN_KEYS).agg((pl.col("rank") <= 50).sum().alias("ret_rel_sla_50"))
    q_file = credit_file.group_by(RUN_KEYS).agg(pl.col("gain").sum().alias("file_gain_10"))
    h10 = h.filter(pl.col("rank") <= 10)
    q_n10 = h10.group_by(RUN_KEYS).agg(pl.len().alias("n_hits_10"))
    q_judged = _judged(h10, qrels, spans)
    ideal = ideal_dcg(spans)

    out = (
        base.join(q_all, on=RUN_KEYS, how="left")
        .join(q_sla, on=RUN_KEYS, how="left")
        .join(q_file, on=RUN_KEYS, how="left")
        .join(q_n10, on=RUN_KEYS, how="left")
        .join(q_judged, on=RUN_KEYS, how="left")
        .join(ideal, on="qid", how="left")
        .with_columns(
            pl.col("dcg_10", "span_gain_10", "file_gain_10").fill_null(0).cast(pl.Float64),
            pl.col("ret_rel_50", "ret_rel_sla_50", "n_hits_10", "judged_hits_10", "n_rel").fill_null(0).cast(pl.Int64),
            pl.col("idcg_10").fill_null(0.0),
        )
    )
    fr = pl.col("first_rank")
    out = out.with_columns(
        pl.when(pl.col("idcg_10") > 0).then(pl.col("dcg_10") / pl.col("idcg_10")).otherwise(0.0).alias("ndcg_10"),
        pl.when(pl.col("n_rel") > 0).then(pl.col("ret_rel_50") / pl.col("n_rel")).otherwise(0.0).alias("recall_50"),
        pl.when(pl.col("n_rel") > 0).then(pl.col("ret_rel_sla_50") / pl.col("n_rel")).otherwise(0.0).alias("sla_recall_50"),
        pl.when(fr <= 10).then(1.0 / fr.cast(pl.Float64)).otherwise(0.0).fill_null(0.0).alias("mrr_10"),
        (fr <= 1).fill_null(False).cast(pl.Float64).alias("success_1"),
        (fr <= 5).fill_null(False).cast(pl.Float64).alias("success_5"),
        (fr <= 10).fill_null(False).cast(pl.Float64).alias("success_10"),
        pl.when(pl.col("n_hits_10") > 0).then(pl.col("judged_hits_10") / pl.col("n_hits_10")).otherwise(None).alias("judged_10"),
        pl.col("error").is_not_null().cast(pl.Float64).alias("failed"),
        pl.col("within_sla").fill_null(False).cast(pl.Float64),
    )
    cols = ["run_id", "system", "qid", "suite", "intent", "language", "lat_ms", *PER_QUERY_METRICS,
            "judged_10", "n_hits_10", "judged_hits_10", "span_gain_10", "file_gain_10", "failed",
            "within_sla", "probes", "cpu_ms"]
    return out.select(cols).sort(["system", "qid"])
