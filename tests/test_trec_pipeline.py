"""The weekly pipeline's per-query measures are registry measures (issue 19, item 1): the
columns of `contracts.PER_QUERY_METRICS` are `registry.PIPELINE_MEASURES`, and the pipeline's
values (`lens_core.measures.metrics`) equal the registry's under span credit, query by query."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from lens_core.common.contracts import PER_QUERY_METRICS
from lens_core.measures.metrics import per_query_metrics
from lens_core.measures.registry import PIPELINE_MEASURES, MeasureError, pipeline_measure
from lens_core.measures.trec import compute, evaluate_input, load


def test_per_query_columns_are_the_registry_measures():
    assert tuple(PIPELINE_MEASURES) == PER_QUERY_METRICS
    assert pipeline_measure("ndcg_10").name == "nDCG@10"
    assert pipeline_measure("mrr_10").trec_name == "recip_rank_10"
    with pytest.raises(MeasureError):
        pipeline_measure("bogus")


def test_pipeline_values_equal_the_registry_under_span_credit(tmp_path):
    rng = random.Random(7)
    q_lines, r_lines, hits = [], [], []
    for qi in range(60):
        qid = f"q{qi:03d}"
        spans = {}
        for _ in range(rng.randint(1, 6)):
            path = f"src/f{rng.randint(0, 3)}.py"
            s = rng.randint(1, 60)
            spans[("r", path, s, s + rng.randint(0, 12))] = rng.choice([0, 1, 2, 3])
        for (repo, path, s, e), g in spans.items():
            q_lines.append(f"{qid} 0 {repo}:{path}:{s}-{e} {g}\n")
        seen = set()
        for rank in range(1, rng.randint(2, 60)):
            if rng.random() < 0.4:
                repo, path, s, e = rng.choice(list(spans))
                s, e = max(1, s + rng.randint(-2, 2)), e + rng.randint(-2, 2)
                s, e = min(s, e), max(s, e)
            else:
                repo, path, s = "r", f"src/f{rng.randint(0, 3)}.py", rng.randint(1, 70)
                e = s + rng.randint(0, 15)
            if (repo, path, s, e) in seen:
                continue
            seen.add((repo, path, s, e))
            r_lines.append(f"{qid} Q0 {repo}:{path}:{s}-{e} {rank} {100 - rank} sys\n")
            hits.append((qid, len([h for h in hits if h[0] == qid]) + 1, repo, path, s, e))
    qp, rp = tmp_path / "qrels", tmp_path / "run"
    qp.write_text("".join(q_lines))
    rp.write_text("".join(r_lines))
    r = evaluate_input(load(qp, rp), credit="span")
    reg = compute(r, [m for m, credit in PIPELINE_MEASURES.values() if credit == "span"])

    h = pl.DataFrame(hits, schema=["qid", "rank", "repo", "path", "start_line", "end_line"], orient="row")
    h = h.with_columns(
        pl.lit("run").alias("run_id"),
        pl.lit("sys").alias("system"),
        pl.col("rank", "start_line", "end_line").cast(pl.Int32),
        pl.lit(True).alias("in_sla"),
    )
    qrels = pl.DataFrame(
        [ln.split() for ln in q_lines], schema=["qid", "iter", "docno", "rel"], orient="row"
    ).with_columns(pl.col("docno").str.extract_groups(r"^(?P<repo>[^:]+):(?P<path>.+):(?P<s>\d+)-(?P<e>\d+)$"))
    qrels = qrels.unnest("docno").select(
        "qid",
        "repo",
        "path",
        pl.col("s").cast(pl.Int32).alias("start_line"),
        pl.col("e").cast(pl.Int32).alias("end_line"),
        pl.col("rel").cast(pl.Int32),
    )
    agg = (
        h.select("run_id", "system", "qid")
        .unique()
        .with_columns(
            pl.lit("all").alias("suite"),
            pl.lit("all").alias("intent"),
            pl.lit("all").alias("language"),
            pl.lit(1.0).alias("lat_ms"),
            pl.lit(True).alias("within_sla"),
            pl.lit(0, pl.Int32).alias("probes"),
            pl.lit(0.0).alias("cpu_ms"),
            pl.lit(None, pl.String).alias("error"),
        )
    )
    pq = per_query_metrics(agg, h, qrels).sort("qid")
    assert pq["qid"].to_list() == r.qids
    checked = 0
    for column, (m, credit) in PIPELINE_MEASURES.items():
        want = reg[m] if credit == "span" else reg[PIPELINE_MEASURES["recall_50"][0]]  # every hit in SLA here
        np.testing.assert_allclose(pq[column].to_numpy(), want, rtol=0, atol=1e-12, err_msg=column)
        checked += int((want > 0).sum())
    assert checked > 100
