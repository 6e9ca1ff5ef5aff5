"""Pooling and judging (SPEC §3, §11).

Pool: the union over systems of each system's in-SLA top `pool_depth` hits.
Judge: labels pool members from the ground truth — the source spans are relevant (their
rel), every pool member that earns no span credit against them is judged non-relevant
(rel 0), as CodeSearchNet did. A qrels table of human judgments can be merged in; it takes
precedence span by span, and `source` says which label came from where.
"""

from __future__ import annotations

import polars as pl

from lens_core.measures.metrics import SPAN_KEYS, match_pairs, relevant_spans

SOURCE_GROUND_TRUTH = "ground_truth"
SOURCE_JUDGE = "judge:ground_truth"
SOURCE_HUMAN = "human"


def build_pool(hits: pl.DataFrame, depth: int = 50) -> pl.DataFrame:
    """pool.parquet rows: qid, repo, path, start_line, end_line, systems (sorted), best_rank."""
    return (
        hits.filter(pl.col("in_sla") & (pl.col("rank") <= depth))
        .group_by(SPAN_KEYS)
        .agg(pl.col("system").unique().sort().alias("systems"), pl.col("rank").min().alias("best_rank"))
        .sort(SPAN_KEYS)
    )


def judge(pool: pl.DataFrame, ground_truth: pl.DataFrame, human: pl.DataFrame | None = None) -> pl.DataFrame:
    """qrels rows (qid, repo, path, start_line, end_line, rel, source)."""
    gt = ground_truth.select(SPAN_KEYS + ["rel"]).with_columns(pl.lit(SOURCE_GROUND_TRUTH).alias("source"))
    spans = relevant_spans(gt)
    members = pool.select(SPAN_KEYS).with_columns(
        pl.lit("pool").alias("run_id"),
        pl.lit("pool").alias("system"),
        pl.int_range(0, pl.len()).alias("rank"),
    )
    credited = match_pairs(members, spans, file_only=False).select("rank").unique()
    negatives = (
        members.join(credited, on="rank", how="anti")
        .join(gt.select(SPAN_KEYS), on=SPAN_KEYS, how="anti")
        .select(SPAN_KEYS)
        .with_columns(pl.lit(0).alias("rel"), pl.lit(SOURCE_JUDGE).alias("source"))
    )
    qrels = pl.concat([gt, negatives], how="vertical_relaxed")
    if human is not None and human.height:
        human = human.select(SPAN_KEYS + ["rel"]).with_columns(pl.lit(SOURCE_HUMAN).alias("source"))
        qrels = pl.concat(
            [qrels.join(human.select(SPAN_KEYS), on=SPAN_KEYS, how="anti"), human], how="vertical_relaxed"
        )
    return qrels.with_columns(pl.col("start_line", "end_line", "rel").cast(pl.Int32)).sort(SPAN_KEYS)


def pool_counts(pool: pl.DataFrame, qrels: pl.DataFrame) -> pl.DataFrame:
    """pool_counts_by_system.csv: system, contributed, unique_contributed, judged_share.

    judged_share: the share of the system's pool entries that carry a label (directly, or by
    earning span credit against a relevant span).
    """
    spans = relevant_spans(qrels)
    members = pool.with_columns(
        pl.lit("pool").alias("run_id"), pl.lit("pool").alias("system"), pl.int_range(0, pl.len()).alias("rank")
    )
    by_credit = match_pairs(members.drop("systems"), spans, file_only=False).select("rank").unique()
    by_label = members.join(qrels.select(SPAN_KEYS).unique(), on=SPAN_KEYS, how="semi").select("rank")
    judged = pl.concat([by_credit.cast({"rank": pl.Int64}), by_label.cast({"rank": pl.Int64})]).unique()
    flagged = members.with_columns(pl.col("rank").is_in(judged["rank"].implode()).alias("judged"))
    per = (
        flagged.select("systems", "judged", pl.col("systems").list.len().alias("n_sys"))
        .explode("systems")
        .rename({"systems": "system"})
    )
    return (
        per.group_by("system")
        .agg(
            pl.len().alias("contributed"),
            (pl.col("n_sys") == 1).sum().alias("unique_contributed"),
            pl.col("judged").mean().alias("judged_share"),
        )
        .sort("system")
    )


def label_hits(hits: pl.DataFrame, agg: pl.DataFrame, qrels: pl.DataFrame) -> pl.DataFrame:
    """Labelled hits for calibration: system, qid, intent, language, score, label (0/1).

    A hit is relevant (1) when it earns span credit against a relevant span of its query
    (SPEC §4 match rule, without the once-per-ranking rule: confidence is per hit); every
    other returned hit is 0 (judged non-relevant or unjudged, as SPEC §3 counts unjudged).
    """
    spans = relevant_spans(qrels)
    h = hits.select("run_id", "system", "qid", "rank", "repo", "path", "start_line", "end_line", "score")
    rel = match_pairs(h, spans, file_only=False).select("run_id", "system", "qid", "rank").unique()
    meta = agg.select("run_id", "system", "qid", "intent", "language")
    return (
        h.join(rel.with_columns(pl.lit(1).alias("label")), on=["run_id", "system", "qid", "rank"], how="left")
        .join(meta, on=["run_id", "system", "qid"], how="left")
        .select("system", "qid", "intent", "language", "score", pl.col("label").fill_null(0).cast(pl.Int8))
    )
