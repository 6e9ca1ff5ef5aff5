"""Metric parity with trec_eval (pytrec-eval-terrier) and the span-credit rules of SPEC §4."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lens_core.measures.metrics import credit_hits, per_query_metrics, relevant_spans

pytrec_eval = pytest.importorskip("pytrec_eval")


def _agg_for(hits: pl.DataFrame, qids: list[str], system: str = "s") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "run_id": ["r"] * len(qids),
            "system": [system] * len(qids),
            "qid": qids,
            "suite": ["x"] * len(qids),
            "intent": ["nl"] * len(qids),
            "language": ["python"] * len(qids),
            "lat_ms": [10.0] * len(qids),
            "within_sla": [True] * len(qids),
            "probes": [1] * len(qids),
            "cpu_ms": [1.0] * len(qids),
            "error": [None] * len(qids),
        },
        schema_overrides={"error": pl.String, "probes": pl.Int32},
    )


def _hits(rows: list[tuple]) -> pl.DataFrame:
    """rows: (qid, rank, path, start, end[, in_sla])"""
    return pl.DataFrame(
        [
            (("r", "s", q, rk, "repo", p, s, e, (r[5] if len(r) > 5 else True)))
            for r in rows
            for (q, rk, p, s, e) in [r[:5]]
        ],
        schema={
            "run_id": pl.String,
            "system": pl.String,
            "qid": pl.String,
            "rank": pl.Int32,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "in_sla": pl.Boolean,
        },
        orient="row",
    )


def _qrels(rows: list[tuple]) -> pl.DataFrame:
    """rows: (qid, path, start, end, rel)"""
    return pl.DataFrame(
        [(q, "repo", p, s, e, rel, "test") for (q, p, s, e, rel) in rows],
        schema={
            "qid": pl.String,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "rel": pl.Int32,
            "source": pl.String,
        },
        orient="row",
    )


def _random_case(seed: int, n_q: int = 60, n_docs: int = 400, depth: int = 80):
    """Tie-free run where every candidate is a distinct span (doc = span), so span credit
    reduces to trec_eval's exact doc matching."""
    rng = np.random.default_rng(seed)
    hit_rows, qrel_rows, run, qrel = [], [], {}, {}
    for qi in range(n_q):
        q = f"q{qi:03d}"
        docs = rng.choice(n_docs, size=depth, replace=False)
        n_rel = int(rng.integers(0, 12))
        rel_docs = rng.choice(n_docs, size=n_rel, replace=False)
        qrel[q] = {}
        for d in rel_docs:
            rel = int(rng.integers(1, 4))
            qrel[q][f"d{d}"] = rel
            qrel_rows.append((q, f"f{d}.py", 10, 20, rel))
        # non-relevant judged docs too
        for d in rng.choice(n_docs, size=5, replace=False):
            if f"d{d}" not in qrel[q]:
                qrel[q][f"d{d}"] = 0
                qrel_rows.append((q, f"f{d}.py", 10, 20, 0))
        run[q] = {}
        for rank, d in enumerate(docs, start=1):
            if rank > 50:
                break
            run[q][f"d{d}"] = float(1000 - rank)  # strictly decreasing: tie-free
            hit_rows.append((q, rank, f"f{d}.py", 10, 20))
    return _hits(hit_rows), _qrels(qrel_rows), run, qrel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_trec_eval(seed):
    hits, qrels, run, qrel = _random_case(seed)
    qids = sorted(run)
    pq = per_query_metrics(_agg_for(hits, qids), hits, qrels)
    ours = {r["qid"]: r for r in pq.iter_rows(named=True)}
    ev = pytrec_eval.RelevanceEvaluator(qrel, {"ndcg_cut.10", "recall.50", "success.1,5,10"})
    ref = ev.evaluate(run)
    run10 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10]) for q, d in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(qrel, {"recip_rank"}).evaluate(run10)
    checked = 0
    for q in qids:
        if q not in ref:
            continue
        n_rel = sum(1 for v in qrel[q].values() if v > 0)
        if n_rel == 0:
            continue  # trec_eval skips; we score 0 by definition (tested below)
        assert ours[q]["ndcg_10"] == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-9)
        assert ours[q]["recall_50"] == pytest.approx(ref[q]["recall_50"], abs=1e-9)
        assert ours[q]["mrr_10"] == pytest.approx(mrr[q]["recip_rank"], abs=1e-9)
        for k in (1, 5, 10):
            assert ours[q][f"success_{k}"] == pytest.approx(ref[q][f"success_{k}"], abs=1e-9)
        checked += 1
    assert checked > 30


def test_query_without_relevant_scores_zero():
    hits = _hits([("q1", 1, "a.py", 1, 5)])
    pq = per_query_metrics(_agg_for(hits, ["q1"]), hits, _qrels([("q1", "a.py", 1, 5, 0)]))
    assert pq["ndcg_10"][0] == 0.0 and pq["recall_50"][0] == 0.0


def _gains(hits, qrels, file_only=False):
    c = credit_hits(hits.drop("in_sla"), relevant_spans(qrels), file_only=file_only)
    return dict(zip(c["rank"].to_list(), c["gain"].to_list()))


def test_span_credit_inside_and_iou():
    qrels = _qrels([("q", "a.py", 10, 29, 2)])  # 20 lines
    # inside (any size), IoU exactly 0.5, IoU below 0.5, other file
    hits = _hits(
        [
            ("q", 1, "a.py", 12, 14),  # inside -> credit
        ]
    )
    assert _gains(hits, qrels) == {1: 2}
    hits = _hits([("q", 1, "a.py", 20, 39)])  # inter 10, union 30 -> 0.33
    assert _gains(hits, qrels) == {}
    hits = _hits([("q", 1, "a.py", 15, 34)])  # inter 15, union 25 -> 0.6
    assert _gains(hits, qrels) == {1: 2}
    qrels5 = _qrels([("q", "a.py", 1, 10, 1)])
    hits = _hits([("q", 1, "a.py", 6, 15)])  # inter 5, union 15 -> 0.333
    assert _gains(hits, qrels5) == {}
    hits = _hits([("q", 1, "a.py", 1, 20)])  # inter 10, union 20 -> exactly 0.5 -> credit
    assert _gains(hits, qrels5) == {1: 1}
    hits = _hits([("q", 1, "b.py", 10, 29)])
    assert _gains(hits, qrels) == {}


def test_span_credited_once_and_best_gain():
    qrels = _qrels([("q", "a.py", 10, 29, 1), ("q", "a.py", 12, 20, 3)])
    # hit 1 lies inside both: earns the higher gain (3); hit 2 also inside both: earns the
    # remaining one (1); hit 3 duplicates: nothing left.
    hits = _hits([("q", 1, "a.py", 13, 18), ("q", 2, "a.py", 13, 18), ("q", 3, "a.py", 12, 20)])
    assert _gains(hits, qrels) == {1: 3, 2: 1}
    # duplicates of one span are credited once
    qrels1 = _qrels([("q", "a.py", 10, 29, 2)])
    hits = _hits([("q", 1, "a.py", 10, 29), ("q", 2, "a.py", 10, 29)])
    assert _gains(hits, qrels1) == {1: 2}


def test_greedy_is_rank_ordered_not_round_based():
    # h1 matches A(3) and B(2), h2 matches A and B, h3 matches only B:
    # greedy: h1->A, h2->B, h3 nothing.
    qrels = _qrels([("q", "a.py", 1, 100, 3), ("q", "a.py", 40, 60, 2)])
    hits = _hits([("q", 1, "a.py", 45, 55), ("q", 2, "a.py", 42, 58), ("q", 3, "a.py", 41, 59)])
    assert _gains(hits, qrels) == {1: 3, 2: 2}


def test_file_only_credit_and_file_credit_metric():
    qrels = _qrels([("q", "a.py", 10, 29, 2)])
    hits = _hits([("q", 1, "a.py", 200, 220), ("q", 2, "a.py", 10, 29)])
    assert _gains(hits, qrels, file_only=True) == {1: 2}
    pq = per_query_metrics(_agg_for(hits, ["q"]), hits, qrels)
    assert pq["span_gain_10"][0] == 2 and pq["file_gain_10"][0] == 2


def test_sla_recall_counts_only_in_sla_hits():
    qrels = _qrels([("q", "a.py", 1, 10, 1), ("q", "b.py", 1, 10, 1)])
    hits = _hits([("q", 1, "a.py", 1, 10, False), ("q", 2, "b.py", 1, 10, True)])
    pq = per_query_metrics(_agg_for(hits, ["q"]), hits, qrels)
    assert pq["recall_50"][0] == 1.0 and pq["sla_recall_50"][0] == 0.5


def test_missing_queries_count_as_failed_zero():
    qrels = _qrels([("q1", "a.py", 1, 10, 1), ("q2", "a.py", 1, 10, 1)])
    hits = _hits([("q1", 1, "a.py", 1, 10)])
    queries = pl.DataFrame(
        {"qid": ["q1", "q2"], "suite": ["x", "x"], "intent": ["nl", "nl"], "language": ["python", "python"]}
    )
    pq = per_query_metrics(_agg_for(hits, ["q1"]), hits, qrels, queries=queries)
    assert pq.height == 2
    row = pq.filter(pl.col("qid") == "q2").row(0, named=True)
    assert row["ndcg_10"] == 0.0 and row["failed"] == 1.0


def test_judged_share():
    qrels = _qrels([("q", "a.py", 1, 10, 1), ("q", "c.py", 1, 10, 0)])
    hits = _hits([("q", 1, "a.py", 2, 9), ("q", 2, "b.py", 1, 10), ("q", 3, "c.py", 1, 10)])
    pq = per_query_metrics(_agg_for(hits, ["q"]), hits, qrels)
    assert pq["judged_10"][0] == pytest.approx(2 / 3)


def test_hit_order_and_file_key_collisions_do_not_change_metrics(monkeypatch):
    """The hit metrics code queries by run-length ids when hits come grouped by qid (else they
    are sorted first) and join files on a u64 key re-checked against the strings: shuffled
    hits, and a key that collides for every file, give exactly the same metrics."""
    import lens_core.measures.metrics as m

    hits, qrels, _, _ = _random_case(7)
    qids = sorted(hits["qid"].unique().to_list())
    # every 3rd hit from another repo with the same path: only the repo tells the files apart
    hits = hits.with_columns(pl.when(pl.col("rank") % 3 == 0).then(pl.lit("other")).otherwise("repo").alias("repo"))
    base = per_query_metrics(_agg_for(hits, qids), hits, qrels)
    assert base["ndcg_10"].sum() > 0
    shuffled = hits.sample(fraction=1.0, shuffle=True, seed=3)
    assert not shuffled["qid"].is_sorted()
    assert per_query_metrics(_agg_for(hits, qids), shuffled, qrels).equals(base)
    monkeypatch.setattr(m, "_file_key", lambda: pl.lit(0, pl.UInt64).alias("_f"))
    assert per_query_metrics(_agg_for(hits, qids), hits, qrels).equals(base)
