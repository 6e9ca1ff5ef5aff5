"""Pooling and judging (SPEC §3, §11; issue 16).

Pool: the union over systems of each system's in-SLA top `pool_depth` hits.
Judge: a pool member is judged only when a label for it exists. Labels come, in order of
precedence span by span, from human qrels (`source` = `human:<who>`), from the ground truth
(`ground_truth`), and from a declared labelling policy (`policy:<name>`):
- `explicit`: no policy labels; what nobody labelled stays unjudged (scored non-relevant, as
  trec_eval scores unjudged documents, and counted as unjudged by judged@k);
- `codesearchnet`: every pool member of a query that has ground truth and earns no span
  credit against it is non-relevant (rel 0), as CodeSearchNet judged: the reference engine's
  suites, whose ground truth is the one source span of each query.
"""

from __future__ import annotations

import polars as pl

from lens_core.measures.metrics import SPAN_KEYS, match_pairs, relevant_spans

SOURCE_GROUND_TRUTH = "ground_truth"
SOURCE_HUMAN = "human"
POLICIES = ("explicit", "codesearchnet")


def policy_source(policy: str) -> str:
    return f"policy:{policy}"


def build_pool(hits: pl.DataFrame | pl.LazyFrame, depth: int = 50) -> pl.DataFrame:
    """pool.parquet rows: qid, repo, path, start_line, end_line, systems (sorted), best_rank.

    `hits` may be a scan of the hits file (issue 22): see `build_pool_indexed`, whose indexed
    `systems` lists this names."""
    pool, systems = build_pool_indexed(hits, depth)
    return name_systems(pool, systems)


def build_pool_indexed(hits: pl.DataFrame | pl.LazyFrame, depth: int = 50) -> tuple[pl.DataFrame, list[str]]:
    """The pool with `systems` as lists of indices (UInt16) into the sorted system names, and
    those names: `name_systems` turns a slice of it into pool.parquet rows.

    Built one system at a time (that system's distinct in-SLA top-`depth` spans merged into the
    pool so far, which systems retrieved a span kept as bits of UInt64 words until the end), so
    memory follows the pool's keys and one system's rows, not the hits of every system; the
    systems' names, one string per member and system (most of the named pool's memory at 32
    systems), are written a slice at a time by the caller (`write_pool`)."""
    lf = hits.lazy()
    systems = lf.select(pl.col("system").unique()).collect().get_column("system").sort().to_list()
    words = [f"__w{k}" for k in range(max(1, -(-len(systems) // 64)))]
    pool: pl.DataFrame | None = None
    pending: list[pl.DataFrame] = []

    def merge(frames: list[pl.DataFrame]) -> pl.DataFrame:
        return (
            pl.concat([f.lazy() for f in frames])
            .group_by(SPAN_KEYS)
            .agg(pl.col("best_rank").min(), *[pl.col(w).bitwise_or() for w in words])
            .collect(engine="streaming")
        )

    for i, system in enumerate(systems):
        bits = [pl.lit((1 << (i % 64)) if k == i // 64 else 0, dtype=pl.UInt64).alias(w) for k, w in enumerate(words)]
        pending.append(
            lf.filter((pl.col("system") == system) & pl.col("in_sla") & (pl.col("rank") <= depth))
            .group_by(SPAN_KEYS)
            .agg(pl.col("rank").min().alias("best_rank"))
            .with_columns(bits)
            .select(*SPAN_KEYS, "best_rank", *words)
            .collect(engine="streaming")
        )
        # merge when the systems waiting hold as many rows as the pool so far: each row is merged
        # O(log systems) times, and memory stays within about twice the pool
        if sum(p.height for p in pending) >= max(pool.height if pool is not None else 0, 1 << 20):
            pool = merge(([pool] if pool is not None else []) + pending)
            pending = []
    if pending:
        pool = merge(([pool] if pool is not None else []) + pending)
    if pool is None:
        empty = {
            **dict(zip(SPAN_KEYS, (pl.String, pl.String, pl.String, pl.Int32, pl.Int32))),
            "systems": pl.List(pl.UInt16),
            "best_rank": pl.Int32,
        }
        return pl.DataFrame(schema=empty), systems
    # bits -> system indices (2 bytes per member and system)
    index = [
        pl.when((pl.col(words[i // 64]) & pl.lit(1 << (i % 64), dtype=pl.UInt64)) != 0).then(pl.lit(i, pl.UInt16))
        for i in range(len(systems))
    ]
    pool = pool.select(*SPAN_KEYS, pl.concat_list(index).list.drop_nulls().alias("systems"), "best_rank")
    return pool.sort(SPAN_KEYS), systems


def name_systems(pool: pl.DataFrame, systems: list[str]) -> pl.DataFrame:
    """`build_pool_indexed` rows with each `systems` index replaced by its name."""
    if not systems:
        return pool.with_columns(pl.col("systems").cast(pl.List(pl.String)))
    return pool.with_columns(
        pl.col("systems").list.eval(
            pl.element().replace_strict(list(range(len(systems))), systems, return_dtype=pl.String)
        )
    )


POOL_WRITE_ROWS = 1 << 17  # rows named and written at a time (a row group each)


def pool_slices(pool: pl.DataFrame, systems: list[str], rows: int = POOL_WRITE_ROWS):
    """The named pool (`name_systems`) a slice of `rows` at a time, for a streaming writer."""
    for offset in range(0, max(pool.height, 1), rows):
        yield name_systems(pool.slice(offset, rows), systems)


def judge(
    pool: pl.DataFrame, ground_truth: pl.DataFrame, human: pl.DataFrame | None = None, policy: str = "explicit"
) -> pl.DataFrame:
    """qrels rows (qid, repo, path, start_line, end_line, rel, source): the labels that exist
    for this pool under `policy` (see the module docstring). `human` rows keep their `source`
    (default `human`) and replace any other label of the same span."""
    if policy not in POLICIES:
        raise ValueError(f"unknown labelling policy {policy!r}: expected one of {', '.join(POLICIES)}")
    gt = ground_truth.select(SPAN_KEYS + ["rel"]).with_columns(pl.lit(SOURCE_GROUND_TRUTH).alias("source"))
    parts = [gt]
    if policy == "codesearchnet":
        spans = relevant_spans(gt)
        members = (
            pool.join(gt.select("qid").unique(), on="qid", how="semi")
            .select(SPAN_KEYS)
            .with_columns(
                pl.lit("pool").alias("run_id"),
                pl.lit("pool").alias("system"),
                pl.int_range(0, pl.len()).alias("rank"),
            )
        )
        credited = match_pairs(members, spans, file_only=False).select("rank").unique()
        parts.append(
            members.join(credited, on="rank", how="anti")
            .join(gt.select(SPAN_KEYS), on=SPAN_KEYS, how="anti")
            .select(SPAN_KEYS)
            .with_columns(pl.lit(0).alias("rel"), pl.lit(policy_source(policy)).alias("source"))
        )
    qrels = pl.concat(parts, how="vertical_relaxed").with_columns(
        pl.col("start_line", "end_line", "rel").cast(pl.Int32)
    )
    if human is not None and human.height:
        h = human if "source" in human.columns else human.with_columns(pl.lit(SOURCE_HUMAN).alias("source"))
        h = h.select(SPAN_KEYS + ["rel", "source"]).with_columns(
            pl.col("start_line", "end_line", "rel").cast(pl.Int32), pl.col("source").fill_null(SOURCE_HUMAN)
        )
        qrels = pl.concat([qrels.join(h.select(SPAN_KEYS), on=SPAN_KEYS, how="anti"), h], how="vertical_relaxed")
    return qrels.sort(SPAN_KEYS)


def judged_flags(pool: pl.DataFrame, qrels: pl.DataFrame) -> pl.Series:
    """Boolean `judged`, aligned with `pool`'s rows: the member carries a label directly, or
    earns span credit against a labelled relevant span (what judged@k counts as judged).

    Span credit is looked for only among the members nobody labelled (a labelled member is
    judged either way), so under a labelling policy that labels most of the pool the span
    join runs on a remainder, and memory follows the pool's key columns, not a copy of it
    with its `systems` lists (issue 22)."""
    keys = pool.select(SPAN_KEYS).with_row_index("_row")
    labelled = qrels.select(SPAN_KEYS).unique().with_columns(pl.lit(True).alias("_l"))
    flagged = keys.join(labelled, on=SPAN_KEYS, how="left", maintain_order="left")
    label = flagged.get_column("_l").fill_null(False)
    rest = flagged.filter(~label).drop("_l")
    del flagged
    spans = relevant_spans(qrels)
    judged = label
    if rest.height and spans.height:
        members = rest.rename({"_row": "rank"}).with_columns(
            pl.lit("pool").alias("run_id"), pl.lit("pool").alias("system")
        )
        credited = match_pairs(members, spans, file_only=False).get_column("rank").unique()
        judged = label | keys.get_column("_row").is_in(credited.implode())
    return judged.alias("judged")


def judged_members(pool: pl.DataFrame, qrels: pl.DataFrame) -> pl.DataFrame:
    """The pool with a `judged` flag (`judged_flags`)."""
    return pool.with_columns(judged_flags(pool, qrels))


def pool_counts(pool: pl.DataFrame, qrels: pl.DataFrame, judged: pl.Series | None = None) -> pl.DataFrame:
    """pool_counts_by_system.csv: system, contributed, unique_contributed, judged_share.

    judged_share: the share of the system's pool entries that carry a label (directly, or by
    earning span credit against a relevant span). `judged`: `judged_flags(pool, qrels)` when the
    caller has it. The systems are counted as categorical codes (the exploded `systems` lists
    would otherwise copy one string per member and system)."""
    judged = judged_flags(pool, qrels) if judged is None else judged
    per = (
        pool.select(
            pl.col("systems").cast(pl.List(pl.Categorical)),
            judged.alias("judged"),
            pl.col("systems").list.len().cast(pl.UInt16).alias("n_sys"),
        )
        .explode("systems")
        .rename({"systems": "system"})
        .drop_nulls("system")
    )
    return (
        per.group_by("system")
        .agg(
            pl.len().cast(pl.UInt32).alias("contributed"),
            (pl.col("n_sys") == 1).sum().cast(pl.UInt32).alias("unique_contributed"),
            pl.col("judged").mean().alias("judged_share"),
        )
        .with_columns(pl.col("system").cast(pl.String))
        .sort("system")
    )


LABEL_HIT_COLUMNS = ("run_id", "system", "qid", "rank", "repo", "path", "start_line", "end_line", "score")


def label_hits(hits: pl.DataFrame, agg: pl.DataFrame, qrels: pl.DataFrame) -> pl.DataFrame:
    """Labelled hits for calibration: system, qid, intent, language, score, label (0/1).

    A hit is relevant (1) when it earns span credit against a relevant span of its query
    (SPEC §4 match rule, without the once-per-ranking rule: confidence is per hit); every
    other returned hit is 0 (judged non-relevant or unjudged, as SPEC §3 counts unjudged).
    """
    spans = relevant_spans(qrels)
    h = hits.select(LABEL_HIT_COLUMNS)
    rel = match_pairs(h, spans, file_only=False).select("run_id", "system", "qid", "rank").unique()
    meta = agg.select("run_id", "system", "qid", "intent", "language")
    return (
        h.join(rel.with_columns(pl.lit(1).alias("label")), on=["run_id", "system", "qid", "rank"], how="left")
        .join(meta, on=["run_id", "system", "qid"], how="left")
        .select("system", "qid", "intent", "language", "score", pl.col("label").fill_null(0).cast(pl.Int8))
    )


def unjudged_share(scores: pl.DataFrame) -> pl.DataFrame:
    """Share of each system's top-10 hits that nobody labelled, per slice: 1 - judged@10
    (scores rows of metric `judged_10`). Columns: system, then one column per slice."""
    j = scores.filter(pl.col("metric") == "judged_10")
    if j.height == 0:
        return pl.DataFrame({"system": []}, schema={"system": pl.String})
    return (
        j.select("system", "slice", (1 - pl.col("mean")).round(4).alias("unjudged_10"))
        .pivot(on="slice", index="system", values="unjudged_10")
        .sort("system")
    )
