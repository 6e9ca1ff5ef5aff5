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

Extra measures (issue 19): measures listed under `measures:` beyond the contract's are extra
per-query columns after the contract's, computed through the registry (`registry_columns`: a
`Ranked` table built with span credit, the suite's query set, a missing query scoring 0).

Memory (issue 19): a system's hits read lazily (Parquet) are streamed in chunks of whole
queries (`_query_chunks`; the read itself, and a read started ahead of its use, are
`lens_core.measures.hitread`'s); each query's columns depend on its own hits only, so the rows
are the same, to the bit, as from one whole read.

Why this is one module: span credit, the per-ranking columns built from it (whole or streamed)
and the per-query measures are one chain over the same keys and conventions; the weekly
pipeline, `lens-eval score` and `lens-eval trec --credit span` all call into it, and splitting
it would put the credit rules and the columns that depend on them in different places.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import polars as pl

from lens_core.common.contracts import PER_QUERY_METRICS
from lens_core.measures import hitread
from lens_core.measures.hitread import HIT_COLS, ReadAhead, system_hits
from lens_core.measures.registry import NONPOOL, UNJUDGED, PipelineMeasure, Ranked, extra_measures

RUN_KEYS = ["run_id", "system", "qid"]
SPAN_KEYS = ["qid", "repo", "path", "start_line", "end_line"]


def relevant_spans(qrels: pl.DataFrame) -> pl.DataFrame:
    """Relevant spans (rel > 0), one row per distinct span with its max rel and a span id."""
    # sorted by span, then gain descending: the first row of each span holds its max rel
    return (
        qrels.lazy()
        .filter(pl.col("rel") > 0)
        .select(SPAN_KEYS + ["rel"])
        .sort(SPAN_KEYS + ["rel"], descending=[False] * len(SPAN_KEYS) + [True])
        .unique(SPAN_KEYS, keep="first", maintain_order=True)
        .with_row_index("span_id")
        .with_columns(pl.col("span_id").cast(pl.Int64), pl.col("rel").cast(pl.Int64))
        .collect()
    )


def match_pairs(hits: pl.DataFrame, spans: pl.DataFrame, file_only: bool) -> pl.DataFrame:
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


def _credit_pairs(pairs: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Greedy credit from candidate pairs (keys + rank, span_id, rel) -> (keys, rank, gain)."""
    schema = {**{k: pairs.schema.get(k, pl.String) for k in keys}, "rank": pl.Int32, "gain": pl.Int64}
    if pairs.height == 0:
        return pl.DataFrame(schema=schema)
    # Rankings where some hit matches two or more spans need the sequential greedy; the rest
    # (nearly all) are resolved with one group-by. No window expressions: they cost ~10x more.
    dup = pairs.select(pl.struct(keys + ["rank"]).is_duplicated()).to_series()
    if dup.any():
        multi = pairs.filter(dup).select(keys).unique()
        simple = pairs.join(multi, on=keys, how="anti")
        complex_ = pairs.join(multi, on=keys, how="semi").sort(
            keys + ["rank", "rel", "span_id"], descending=[False] * len(keys) + [False, True, False]
        )
    else:
        simple, complex_ = pairs, pairs.clear()
    # Every hit matches one span here: the span goes to its first (lowest-rank) hit, which
    # earns the span's rel (one rel per span). Rows come in no particular order.
    simple_credit = (
        simple.lazy()
        .group_by(keys + ["span_id"])
        .agg(pl.col("rank").min(), pl.col("rel").first().alias("gain"))
        .select(keys + ["rank", "gain"])
        .collect()
    )
    rows: list[tuple] = []
    if complex_.height:
        # Only rankings where some hit matches two or more spans: a few rows each.
        for key, grp in complex_.group_by(keys, maintain_order=True):
            got = _greedy(grp["rank"].to_numpy(), grp["span_id"].to_numpy(), grp["rel"].to_numpy())
            rows.extend((*key, r, g) for r, g in got.items())
    complex_credit = pl.DataFrame(rows, schema=schema, orient="row")
    return pl.concat(
        [simple_credit.with_columns(pl.col("rank").cast(pl.Int32), pl.col("gain").cast(pl.Int64)), complex_credit],
        how="vertical",
    )


def credit_hits(hits: pl.DataFrame, spans: pl.DataFrame, file_only: bool = False) -> pl.DataFrame:
    """Gain earned by each hit: (run_id, system, qid, rank, gain) for hits with gain > 0."""
    return _credit_pairs(match_pairs(hits, spans, file_only), RUN_KEYS)


def ideal_dcg(spans: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    """(qid, idcg_10, n_rel) from the relevant spans of each query.

    Spans sorted by (qid, rel descending); each span's position in its query comes from the
    run-length ids of qid (numpy), not a window expression."""
    s = spans.select("qid", "rel").sort(["qid", "rel"], descending=[False, True])
    q = s.select(pl.col("qid").rle_id()).to_series().to_numpy()
    starts = np.flatnonzero(np.diff(q, prepend=-1)) if q.size else np.zeros(0, dtype=np.int64)
    pos = np.arange(q.size) - starts[q] + 1 if q.size else np.zeros(0, dtype=np.int64)
    return (
        s.with_columns(pl.Series("_pos", pos, dtype=pl.Int64))
        .group_by("qid")
        .agg(
            (pl.when(pl.col("_pos") <= k).then(pl.col("rel") / (pl.col("_pos") + 1).log(2)).otherwise(0.0))
            .sum()
            .alias("idcg_10"),
            pl.len().alias("n_rel"),
        )
    )


HIT_METRIC_COLS = [
    "dcg_10",
    "ret_rel_50",
    "first_rank",
    "span_gain_10",
    "ret_rel_sla_50",
    "file_gain_10",
    "n_hits_10",
    "judged_hits_10",
]


def _file_key() -> pl.Expr:
    """A u64 key of (query code, path): joins on it replace joins on three strings (4x
    faster). The repo is left out of the hash (files of one query rarely share a path across
    repos); a shared path or a hash collision only adds candidate pairs, which the exact
    comparison of query, repo and path after the join removes."""
    return (pl.col("_q").hash(11) ^ pl.col("path").hash(17)).alias("_f")


# After a join on `_file_key` (right-hand columns suffixed `_s`): the pairs that really share
# query, repo and path.
_SAME_FILE = (
    (pl.col("_q") == pl.col("_q_s")) & (pl.col("repo") == pl.col("repo_s")) & (pl.col("path") == pl.col("path_s"))
)


def _with_query_codes(hs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(hits with `_q`, the query code, and `_f`, the file key; the (`_q`, qid) table in code
    order 0, 1, ...). Hits come grouped by query from the product's own tables: one
    run-length id per query, no string hashing. Hits in any other order (a qid in two runs)
    are sorted first (stable, so ranks keep their order). Lazy plans throughout: on a frame
    read from Parquet (several chunks per column) they run 2-4x faster than eager calls."""
    hs = hs.lazy().with_columns(pl.col("qid").rle_id().alias("_q")).with_columns(_file_key()).collect()
    qn = hs.get_column("_q").to_numpy()
    starts = np.flatnonzero(qn[1:] != qn[:-1]) + 1 if qn.size else np.zeros(0, dtype=np.int64)
    starts = np.concatenate((np.zeros(min(qn.size, 1), dtype=np.int64), starts))
    qids = pl.DataFrame(
        {"_q": pl.int_range(starts.size, dtype=pl.UInt32, eager=True), "qid": hs.get_column("qid").gather(starts)}
    )
    if not qids.get_column("qid").is_unique().all():
        return _with_query_codes(hs.drop("_q", "_f").sort("qid", maintain_order=True))
    return hs, qids


def _judged_only(qrels: pl.DataFrame, spans: pl.DataFrame) -> pl.DataFrame:
    """The judged spans that are not relevant (every qrels row of the span has rel <= 0):
    SPAN_KEYS, one row each."""
    return (
        qrels.lazy()
        .filter(pl.col("rel") <= 0)
        .select(SPAN_KEYS)
        .unique()
        .join(spans.lazy().select(SPAN_KEYS), on=SPAN_KEYS, how="anti")
        .collect()
    )


def _ranking_metrics(hs: pl.DataFrame, spans: pl.DataFrame, judged_only: pl.DataFrame) -> pl.DataFrame:
    """Hit-derived columns of one (run_id, system), one row per qid that has hits.

    `hs`: that system's hits with rank <= MAX_RANK (columns `HIT_COLS`); `spans`: the
    relevant spans (`relevant_spans`); `judged_only`: the other judged spans
    (`_judged_only`). The hits are joined once to every judged span; span credit, SLA credit
    (in_sla hits only), file credit (top 10, same file, relevant spans) and the judged count
    (top-10 hits earning span credit or equal to a judged span) all come from that one set of
    candidate pairs. Queries are integer codes throughout (`_with_query_codes`); files are u64
    keys checked against the strings after the join (`_file_key`).
    """
    hs, qids = _with_query_codes(hs)
    judged = pl.concat(
        [
            spans.lazy().select(SPAN_KEYS + ["span_id", "rel"]),
            judged_only.lazy()
            .select(SPAN_KEYS)
            .with_columns(pl.lit(-1, pl.Int64).alias("span_id"), pl.lit(0, pl.Int64).alias("rel")),
        ]
    )
    sp = (
        judged.join(qids.lazy(), on="qid", how="inner")
        .select(
            "_q",
            "repo",
            "path",
            pl.col("start_line").alias("s_start"),
            pl.col("end_line").alias("s_end"),
            "span_id",
            "rel",
        )
        .with_columns(_file_key())
    )
    inter = (pl.min_horizontal("end_line", "s_end") - pl.max_horizontal("start_line", "s_start") + 1).clip(0)
    union = (pl.col("end_line") - pl.col("start_line") + 1) + (pl.col("s_end") - pl.col("s_start") + 1) - inter
    inside = (pl.col("start_line") >= pl.col("s_start")) & (pl.col("end_line") <= pl.col("s_end"))
    exact = (pl.col("start_line") == pl.col("s_start")) & (pl.col("end_line") == pl.col("s_end"))
    relevant = pl.col("rel") > 0
    # The join is collected before the exact filter: in one plan, the optimiser folds the
    # string equalities into the join keys and hashes every hit's strings (2x slower).
    pairs = (
        hs.lazy()
        .join(sp, on="_f", how="inner", suffix="_s")
        .collect()
        .lazy()
        .filter(_SAME_FILE)
        .select(
            "_q",
            "rank",
            "span_id",
            "rel",
            "in_sla",
            (relevant & (inside | (inter * 2 >= union))).alias("_ok"),
            exact.alias("_exact"),
        )
        .collect()
    )
    span_pairs = pairs.filter(pl.col("_ok"))
    cols = ["_q", "rank", "span_id", "rel"]
    credit_all = _credit_pairs(span_pairs.select(cols), ["_q"])
    credit_sla = _credit_pairs(span_pairs.filter(pl.col("in_sla")).select(cols), ["_q"])
    credit_file = _credit_pairs(pairs.filter(relevant & (pl.col("rank") <= 10)).select(cols), ["_q"])

    # Per-query columns on dense arrays indexed by query code (codes are 0..n-1 in `qids`
    # order): no group-by, no join, and every sum has a fixed order (DCG adds ranks 1..10 in
    # turn), so the same input gives the same bits on every run.
    n = qids.height

    def arrays(df: pl.DataFrame, *names: str) -> list[np.ndarray]:
        return [df.get_column(c).to_numpy() for c in names]

    def count(q: np.ndarray) -> np.ndarray:
        return np.bincount(q, minlength=n)

    def total(q: np.ndarray, w: np.ndarray) -> np.ndarray:  # integer weights: exact
        return np.bincount(q, weights=w, minlength=n).astype(np.int64)

    qa, ra, ga = arrays(credit_all, "_q", "rank", "gain")
    top = ra <= 10
    gains = np.zeros((n, 10))
    gains[qa[top], ra[top] - 1] = ga[top]
    disc = 1.0 / pl.Series(np.arange(2, 12, dtype=np.float64)).log(2).to_numpy()
    dcg = np.zeros(n)
    for k in range(10):
        dcg += gains[:, k] * disc[k]
    first = np.full(n, np.iinfo(np.int32).max, dtype=np.int32)
    np.minimum.at(first, qa, ra.astype(np.int32))
    has_credit = count(qa) > 0
    qs, rs = arrays(credit_sla, "_q", "rank")
    qf, gf = arrays(credit_file, "_q", "gain")
    # Judged top-10 hits: those earning span credit, plus those equal to any judged span
    # (relevant or not; a hit doing both counts once).
    qj, rj = arrays(pairs.filter((pl.col("rank") <= 10) & (pl.col("_ok") | pl.col("_exact"))), "_q", "rank")
    seen = np.zeros((n, 10), dtype=bool)
    seen[qj, rj - 1] = True
    top10 = hs.lazy().select(pl.col("_q").filter(pl.col("rank") <= 10)).collect().to_series().to_numpy()

    def col(name: str, values: np.ndarray, dtype: pl.DataType, present: np.ndarray) -> pl.Series:
        return pl.Series(name, values, dtype=dtype).set(pl.Series(~present), None)

    sla_rows, file_rows, judged_rows = count(qs) > 0, count(qf) > 0, seen.any(axis=1)
    q = qids.with_columns(
        pl.Series("n_hits_10", count(top10), dtype=pl.UInt32),
        col("dcg_10", dcg, pl.Float64, has_credit),
        col("ret_rel_50", count(qa[ra <= 50]), pl.UInt32, has_credit),
        col("first_rank", first, pl.Int32, has_credit),
        col("span_gain_10", total(qa[top], ga[top]), pl.Int64, has_credit),
        col("ret_rel_sla_50", count(qs[rs <= 50]), pl.UInt32, sla_rows),
        col("file_gain_10", total(qf, gf), pl.Int64, file_rows),
        col("judged_hits_10", seen.sum(axis=1), pl.UInt32, judged_rows),
    )
    return q.drop("_q")


def _query_chunks(batches: Iterable[pl.DataFrame]):
    """The hits in chunks of whole runs of one qid, from streamed batches: batches are joined
    (without copying) until a chunk holds HIT_CHUNK_ROWS rows, then cut at the start of its last
    qid's run, which is carried into the next chunk; the last chunk takes what is left. Each
    chunk costs a fixed ~25 polars calls (~1 ms each), so fewer chunks are faster; each chunk's
    intermediate tables take ~65 MB per million hits beside the batches (peak RSS), so not one
    chunk for all (48,768 queries x 100 hits: three chunks instead of six; issue 19)."""
    pending: list[pl.DataFrame] = []
    rows = 0
    for b in batches:
        if b.height == 0:
            continue
        pending.append(b)
        rows += b.height
        if rows < hitread.HIT_CHUNK_ROWS:
            continue
        df = pl.concat(pending, how="vertical_relaxed") if len(pending) > 1 else pending[0]
        r = df.get_column("qid").rle_id().to_numpy()
        cut = int(np.searchsorted(r, r[-1]))  # the start of the last qid's run
        if cut:
            yield df.slice(0, cut)
        pending, rows = [df.slice(cut)], df.height - cut
    if rows:
        yield pl.concat(pending, how="vertical_relaxed") if len(pending) > 1 else pending[0]


def _ranking_metrics_streamed(
    hs: pl.LazyFrame | Iterable[pl.DataFrame], spans: pl.DataFrame, judged_only: pl.DataFrame
) -> pl.DataFrame | None:
    """`_ranking_metrics` over the hits in chunks of whole queries (`_query_chunks`): the same
    rows, to the bit (each query's columns depend on its own hits only), at a fraction of the
    memory. `hs`: one system's hits (`system_hits`) as a LazyFrame, or its batches already being
    read (`read_ahead`). None when a qid's hits are not contiguous (a qid in two chunks): the
    caller then reads the system's hits whole."""
    if isinstance(hs, pl.LazyFrame):
        hs = hitread.batches(hs)
    parts = [_ranking_metrics(c, spans, judged_only) for c in _query_chunks(hs)]
    if not parts:
        return None
    out = pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]
    if not out.get_column("qid").is_unique().all():
        return None
    return out


def _system_keys(hits: pl.DataFrame | pl.LazyFrame) -> list[tuple[str, str]]:
    keys = hits.select("run_id", "system").unique()
    if isinstance(keys, pl.LazyFrame):
        keys = keys.collect()
    return sorted(keys.iter_rows())


def hit_metrics(
    hits: pl.DataFrame | pl.LazyFrame,
    qrels: pl.DataFrame,
    spans: pl.DataFrame | None = None,
    systems: list[tuple[str, str]] | None = None,
    check: Callable[[pl.DataFrame, str, str], None] | None = None,
    check_columns: tuple[str, ...] = (),
    ahead: ReadAhead | None = None,
) -> pl.DataFrame:
    """Hit-derived per-ranking columns (RUN_KEYS + HIT_METRIC_COLS) for every ranking with
    at least one hit of rank <= MAX_RANK.

    One (run_id, system) at a time: with a LazyFrame (e.g. `pl.scan_parquet`), each system's
    hits are read with the filter pushed down and dropped before the next, so memory stays
    at about one system's top-50 hits. `systems`: the (run_id, system) pairs of `hits` when
    the caller knows them (e.g. from Parquet statistics), saving a pass over those columns.
    `check(system_hits, run_id, system)`: called with each system's hits as they are read
    (rank <= MAX_RANK, the columns the metrics use plus `check_columns`), before any is used:
    `lens-eval score` validates its input there, without a second pass over the file. It
    raises to refuse the input. `ahead`: a system's read already started (`read_ahead`, on
    `hits`); its batches are used for that system.
    """
    spans = relevant_spans(qrels) if spans is None else spans
    judged_only = _judged_only(qrels, spans)
    parts = []
    for run_id, system in _system_keys(hits) if systems is None else systems:
        hs = system_hits(hits, run_id, system, check_columns)
        m = None
        if isinstance(hs, pl.LazyFrame) and check is None:
            started = ahead is not None and ahead.key == (run_id, system)
            m = _ranking_metrics_streamed(ahead.batches if started else hs, spans, judged_only)
        if m is None:
            if isinstance(hs, pl.LazyFrame):
                hs = hs.collect()
            if check is not None:
                check(hs, run_id, system)
                hs = hs.select(HIT_COLS)
            m = _ranking_metrics(hs, spans, judged_only)
        del hs
        parts.append(m.select(pl.lit(run_id).alias("run_id"), pl.lit(system).alias("system"), pl.all()))
    schema = {
        "run_id": pl.String,
        "system": pl.String,
        "qid": pl.String,
        "dcg_10": pl.Float64,
        "ret_rel_50": pl.UInt32,
        "first_rank": pl.Int32,
        "span_gain_10": pl.Int64,
        "ret_rel_sla_50": pl.UInt32,
        "file_gain_10": pl.Int64,
        "n_hits_10": pl.UInt32,
        "judged_hits_10": pl.UInt32,
    }
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(parts, how="vertical_relaxed")


def per_query_metrics(
    agg: pl.DataFrame,
    hits: pl.DataFrame | pl.LazyFrame,
    qrels: pl.DataFrame,
    queries: pl.DataFrame | None = None,
    ranking: pl.DataFrame | None = None,
    spans: pl.DataFrame | None = None,
    measures: Sequence[PipelineMeasure] | None = None,
    ideal: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Per-query metrics for every (run_id, system, qid) of `agg` (SPEC §4).

    `agg` must hold one row per query of each system, failed ones included (they score 0).
    If `queries` is given, queries of the suite missing from a system's agg rows are added
    as failed (scoring 0, `failed` = 1) so nothing is silently dropped.
    `hits` may be a LazyFrame: it is read one system at a time (see `hit_metrics`);
    `ranking` is `hit_metrics(hits, qrels)` and `spans` `relevant_spans(qrels)` when the
    caller already has them, and `ideal` `ideal_dcg(spans)`.
    Returns the bundle columns (`contracts.PER_QUERY_SCHEMA`) plus diagnostics:
    judged_10 (judged share of the top 10), n_hits_10, judged_hits_10, span_gain_10,
    file_gain_10, failed, within_sla, probes, cpu_ms; then one column per extra measure
    (`measures`: registry measures beyond the contract's; None: those that `measures:` of the
    config lists, `registry.extra_measures`), computed through the registry (`registry_columns`).
    """
    extras = tuple(extra_measures() if measures is None else (m for m in measures if not m.in_contract))
    base = agg.select(
        "run_id",
        "system",
        "qid",
        "suite",
        "intent",
        "language",
        "lat_ms",
        "within_sla",
        "probes",
        "cpu_ms",
        "error",
    )
    if queries is not None:
        grid = (
            agg.select("run_id", "system")
            .unique()
            .join(queries.select("qid", "suite", "intent", "language"), how="cross")
        )
        missing = grid.join(base.select(RUN_KEYS), on=RUN_KEYS, how="anti")
        if missing.height:
            base = pl.concat(
                [
                    base,
                    missing.with_columns(
                        pl.lit(None, pl.Float64).alias("lat_ms"),
                        pl.lit(False).alias("within_sla"),
                        pl.lit(0, pl.Int32).alias("probes"),
                        pl.lit(0.0).alias("cpu_ms"),
                        pl.lit("missing_from_run").alias("error"),
                    ).select(base.columns),
                ],
                how="vertical_relaxed",
            )

    spans = relevant_spans(qrels) if spans is None else spans
    if ranking is None:
        ranking = hit_metrics(hits, qrels, spans)
    ideal = ideal_dcg(spans) if ideal is None else ideal

    out = (
        base.lazy()
        .join(ranking.lazy(), on=RUN_KEYS, how="left")
        .join(ideal.lazy(), on="qid", how="left")
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
        pl.when(pl.col("n_rel") > 0)
        .then(pl.col("ret_rel_sla_50") / pl.col("n_rel"))
        .otherwise(0.0)
        .alias("sla_recall_50"),
        pl.when(fr <= 10).then(1.0 / fr.cast(pl.Float64)).otherwise(0.0).fill_null(0.0).alias("mrr_10"),
        (fr <= 1).fill_null(False).cast(pl.Float64).alias("success_1"),
        (fr <= 5).fill_null(False).cast(pl.Float64).alias("success_5"),
        (fr <= 10).fill_null(False).cast(pl.Float64).alias("success_10"),
        pl.when(pl.col("n_hits_10") > 0)
        .then(pl.col("judged_hits_10") / pl.col("n_hits_10"))
        .otherwise(None)
        .alias("judged_10"),
        pl.col("error").is_not_null().cast(pl.Float64).alias("failed"),
        pl.col("within_sla").fill_null(False).cast(pl.Float64),
    )
    cols = [
        "run_id",
        "system",
        "qid",
        "suite",
        "intent",
        "language",
        "lat_ms",
        *PER_QUERY_METRICS,
        "judged_10",
        "n_hits_10",
        "judged_hits_10",
        "span_gain_10",
        "file_gain_10",
        "failed",
        "within_sla",
        "probes",
        "cpu_ms",
    ]
    out = out.select(cols).sort(["system", "qid"]).collect()
    if not extras:
        return out
    if hits is None:
        raise ValueError("extra measures need the hits (per_query_metrics was given ranking only)")
    more = registry_columns(out.select(RUN_KEYS), hits, qrels, spans, extras)
    return out.join(more, on=RUN_KEYS, how="left", maintain_order="left").with_columns(
        pl.col(m.column).fill_null(0.0) for m in extras
    )


def registry_columns(
    keys: pl.DataFrame,
    hits: pl.DataFrame | pl.LazyFrame,
    qrels: pl.DataFrame,
    spans: pl.DataFrame,
    measures: Sequence[PipelineMeasure],
) -> pl.DataFrame:
    """RUN_KEYS + one Float64 column per measure (`PipelineMeasure.column`) for every row of
    `keys`, computed by the registry (`Measure.compute`, trec_eval's conventions) on a `Ranked`
    table built with span credit (SPEC §4): a hit's relevance value is the gain its span credit
    earns, else 0 when it equals a judged span (UNJUDGED for a negative grade), else NONPOOL
    (not judged), as `lens-eval trec --credit span` builds it; under `span+sla` credit only hits
    returned within the SLA earn. Every hit of the ranking counts (not only the top 50); a
    query of `keys` without hits has an empty ranking (it scores 0); the judged spans of a query
    are its distinct qrels spans with their highest grade."""
    lines = pl.col("start_line", "end_line").cast(pl.Int64)
    judged = qrels.lazy().with_columns(lines).group_by(SPAN_KEYS).agg(pl.col("rel").max()).collect()
    cols = ["qid", "rank", "repo", "path", "start_line", "end_line", "in_sla"]
    parts = []
    for (run_id, system), grp in keys.group_by(["run_id", "system"], maintain_order=True):
        qids = sorted(set(grp.get_column("qid").to_list()))
        order = pl.DataFrame(
            {"qid": qids, "_qi": np.arange(len(qids), dtype=np.int64)}, schema={"qid": pl.String, "_qi": pl.Int64}
        )
        h = hits.filter((pl.col("run_id") == run_id) & (pl.col("system") == system)).select(cols)
        h = h.collect() if isinstance(h, pl.LazyFrame) else h
        h = (
            h.join(order, on="qid", how="inner")
            .sort(["_qi", "rank"])
            .with_columns(pl.lit(run_id).alias("run_id"), pl.lit(system).alias("system"), pl.col("rank").cast(pl.Int32))
        )
        exact = (
            h.select(SPAN_KEYS)
            .with_columns(lines)
            .join(judged.rename({"rel": "_j"}), on=SPAN_KEYS, how="left", maintain_order="left")
            .get_column("_j")
        )
        j_null, j_val = exact.is_null().to_numpy(), exact.fill_null(0).to_numpy()
        not_credited = np.where(j_null, NONPOOL, np.where(j_val < 0, UNJUDGED, 0))
        counts = np.bincount(h.get_column("_qi").to_numpy(), minlength=len(qids))
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        j = judged.join(order, on="qid", how="inner")
        ranked: dict[str, Ranked] = {}  # one table per credit: the measures share its per-level arrays
        values: dict[str, np.ndarray] = {}
        for pm in measures:
            if pm.credit not in ranked:
                eligible = h if pm.credit == "span" else h.filter(pl.col("in_sla").fill_null(False))
                credit = _credit_pairs(match_pairs(eligible, spans, False), RUN_KEYS)
                gain = h.join(
                    credit.select("qid", "rank", "gain"), on=["qid", "rank"], how="left", maintain_order="left"
                ).get_column("gain")
                ranked[pm.credit] = Ranked(
                    qids=qids,
                    offsets=offsets,
                    rel=np.where(gain.is_not_null().to_numpy(), gain.fill_null(0).to_numpy(), not_credited).astype(
                        np.int64
                    ),
                    judged_q=j.get_column("_qi").to_numpy().astype(np.int64),
                    judged_rel=j.get_column("rel").to_numpy().astype(np.int64),
                )
            values[pm.column] = np.asarray(pm.measure.compute(ranked[pm.credit]), dtype=np.float64)
        parts.append(
            pl.DataFrame({"qid": qids, **values}, schema={"qid": pl.String, **{c: pl.Float64 for c in values}}).select(
                pl.lit(run_id).alias("run_id"), pl.lit(system).alias("system"), pl.all()
            )
        )
    schema = {"run_id": pl.String, "system": pl.String, "qid": pl.String, **{m.column: pl.Float64 for m in measures}}
    return pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame(schema=schema)
