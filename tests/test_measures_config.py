"""The pipeline's measures come from config through the registry (issue 19, item 1): `measures:`
lists them by registry name, extras become per-query columns computed by the registry with span
credit over the suite's queries, a `metric:` may use the registry name or the column, and an
unknown measure is refused naming the key and the file."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from lens_core.common import settings
from lens_core.common.contracts import PER_QUERY_METRICS
from lens_core.common.systems import SystemConfig
from lens_core.decide import promotion
from lens_core.measures import registry
from lens_core.measures.metrics import per_query_metrics
from lens_core.measures.trec import compute, evaluate_input, load

BASE = "measures: [nDCG@10, R@50, SLA-R@50, RR@10, Success@1, Success@5, Success@10"


def _case(tmp_path, seed: int = 3):
    """Hits and qrels where span credit is docno equality (a hit is a judged span exactly, or
    lies in a file no span of its query is in), as TREC files and as the pipeline's tables; a
    suite query the run never answered; some hits outside the SLA."""
    rng = random.Random(seed)
    q_lines, r_lines, hits, qrels = [], [], [], []
    for qi in range(40):
        qid = f"q{qi:03d}"
        grades = {f"src/f{k}.py": rng.choice([0, 0, 1, 2, 3]) for k in range(rng.randint(1, 12))}
        for path, g in grades.items():
            q_lines.append(f"{qid} 0 r:{path}:1-10 {g}\n")
            qrels.append((qid, "r", path, 1, 10, g))
        cands = [(p, 1, 10) for p in grades] + [(f"src/other{k}.py", 5, 20) for k in range(15)]
        rng.shuffle(cands)
        for rank, (path, s, e) in enumerate(cands[: rng.randint(1, len(cands))], start=1):
            r_lines.append(f"{qid} Q0 r:{path}:{s}-{e} {rank} {1000 - rank} sys\n")
            hits.append((qid, rank, "r", path, s, e, rng.random() < 0.7))
    qp, rp = tmp_path / "qrels.trec", tmp_path / "run.trec"
    qp.write_text("".join(q_lines))
    rp.write_text("".join(r_lines))
    h = pl.DataFrame(
        hits, schema=["qid", "rank", "repo", "path", "start_line", "end_line", "in_sla"], orient="row"
    ).with_columns(
        pl.lit("run").alias("run_id"),
        pl.lit("sys").alias("system"),
        pl.col("rank", "start_line", "end_line").cast(pl.Int32),
    )
    q = pl.DataFrame(qrels, schema=["qid", "repo", "path", "start_line", "end_line", "rel"], orient="row").with_columns(
        pl.col("start_line", "end_line", "rel").cast(pl.Int32)
    )
    suite = sorted(set(h["qid"].to_list())) + ["q999"]  # q999: in the suite, never answered
    agg = pl.DataFrame({"qid": sorted(set(h["qid"].to_list()))}).with_columns(
        pl.lit("run").alias("run_id"),
        pl.lit("sys").alias("system"),
        pl.lit("all").alias("suite"),
        pl.lit("all").alias("intent"),
        pl.lit("all").alias("language"),
        pl.lit(1.0).alias("lat_ms"),
        pl.lit(True).alias("within_sla"),
        pl.lit(0, pl.Int32).alias("probes"),
        pl.lit(0.0).alias("cpu_ms"),
        pl.lit(None, pl.String).alias("error"),
    )
    queries = pl.DataFrame({"qid": suite, "suite": "all", "intent": "all", "language": "all"})
    return qp, rp, h, q, agg, queries


def test_extra_measures_from_lens_config_are_per_query_columns_equal_to_the_registry(tmp_path, lens_config):
    lens_config(BASE + ", P@5, AP, nDCG@20, SLA-P@5]\n")
    qp, rp, hits, qrels, agg, queries = _case(tmp_path)
    pq = per_query_metrics(agg, hits, qrels, queries=queries)
    extras = ["P_5", "map", "ndcg_cut_20", "sla_P_5"]
    assert pq.columns[-4:] == extras  # after the contract's columns and the diagnostics
    assert pq.columns.index("ndcg_10") < pq.columns.index("P_5")
    missing = pq.filter(pl.col("qid") == "q999")
    assert missing.height == 1 and all(missing[c][0] == 0.0 for c in extras)  # the suite's set: 0

    # the registry on the same files (span credit, trec_eval's query set: judged queries of the run)
    r = evaluate_input(load(qp, rp), credit="span")
    ms = [registry.pipeline_measure_named(t).measure for t in ("P@5", "AP", "nDCG@20")]
    reg = compute(r, ms)
    got = pq.filter(pl.col("qid").is_in(r.qids)).sort("qid")
    assert got["qid"].to_list() == r.qids
    for col, m in zip(extras, ms):
        np.testing.assert_array_equal(got[col].to_numpy(), reg[m], err_msg=col)
    # a contract measure through the same path equals the pipeline's own column
    np.testing.assert_allclose(
        got["ndcg_10"].to_numpy(),
        compute(r, [registry.Measure("ndcg_cut", 10)])[registry.Measure("ndcg_cut", 10)],
        rtol=0,
        atol=1e-12,
    )

    # and pytrec_eval (doc credit applies here: a hit earns exactly when its docno is judged)
    pytrec_eval = pytest.importorskip("pytrec_eval")
    with open(qp) as f:
        pq_qrels = pytrec_eval.parse_qrel(f)
    with open(rp) as f:
        pq_run = pytrec_eval.parse_run(f)
    res = pytrec_eval.RelevanceEvaluator(pq_qrels, {"P.5", "map", "ndcg_cut.20"}).evaluate(pq_run)
    for col, name in (("P_5", "P_5"), ("map", "map"), ("ndcg_cut_20", "ndcg_cut_20")):
        want = np.array([res[q][name] for q in r.qids])
        np.testing.assert_allclose(got[col].to_numpy(), want, rtol=0, atol=1e-9, err_msg=col)
    assert (got["P_5"] > 0).sum() > 10 and (got["map"] > 0).sum() > 10

    # SLA credit: only in-SLA hits earn, the ranking is unchanged
    assert (pq["sla_P_5"] <= pq["P_5"]).all() and (pq["sla_P_5"] < pq["P_5"]).any()


def test_without_extras_the_table_is_the_contracts():
    assert registry.extra_measures(settings.load_config()) == ()
    assert [m.column for m in registry.configured_measures()] == list(PER_QUERY_METRICS)
    assert [m.name for m in registry.configured_measures()] == [
        "nDCG@10",
        "R@50",
        "SLA-R@50",
        "RR@10",
        "Success@1",
        "Success@5",
        "Success@10",
    ]


@pytest.mark.parametrize(
    "name, column",
    [
        ("nDCG@10", "ndcg_10"),
        ("ndcg_cut.10", "ndcg_10"),
        ("SLA-R@50", "sla_recall_50"),
        ("RR@10", "mrr_10"),
        ("P@5", "P_5"),
        ("AP", "map"),
        ("nDCG@20", "ndcg_cut_20"),
        ("SLA-P@5", "sla_P_5"),
        ("Judged@10", "m_judged_10"),  # not the judged_10 diagnostic
        ("P(rel=2)@5", "P_5_rel2"),
    ],
)
def test_columns_are_deterministic_and_labels_are_registry_names(name, column):
    pm = registry.pipeline_measure_named(name)
    assert pm.column == column
    assert registry.label(column) == pm.name


def _rules(metric: str, sla: str) -> str:
    return (
        "promotion:\n  lexical_pack_a:\n"
        f"    primary: {{metric: {metric}, slice: all, needed: 0.01}}\n"
        "    rules:\n"
        f"      - {{kind: delta, metric: {metric}, slice: all, min: 0.01}}\n"
        f"      - {{kind: delta, metric: {sla}, slice: all, min: 0.0}}\n"
        "      - {kind: latency, metric: lat_p99, max_delta: 0.0}\n"
    )


def _evaluate() -> pl.DataFrame:
    base, var = SystemConfig(name="base"), SystemConfig(name="var", pack="lexical_pack_a")
    comparisons = pl.DataFrame(
        {
            "control": ["base"] * 2,
            "test": ["var"] * 2,
            "slice": ["all"] * 2,
            "metric": ["ndcg_10", "sla_recall_50"],
            "delta": [0.02, -0.001],
            "ci_low": [0.01, -0.01],
            "ci_high": [0.03, 0.008],
            "p_value": [0.01, 0.5],
            "p_holm": [0.02, 0.5],
            "n": [500, 500],
        }
    )
    scores = pl.DataFrame(
        {"system": ["base", "var"], "slice": ["all", "all"], "metric": ["lat_p99", "lat_p99"], "mean": [50.0, 49.0]}
    )
    agg = pl.DataFrame({"system": ["var"], "error": [None], "why_mix_sem": [0], "lat_ms": [1.0]})
    return promotion.evaluate_rules("lexical_pack_a", [var], base, scores, comparisons, agg, gates=[])


def test_rule_by_registry_name_behaves_as_by_column(lens_config):
    lens_config(_rules("ndcg_10", "sla_recall_50"))
    by_column = _evaluate()
    cfg_column = promotion.promotion_config()
    lens_config(_rules("nDCG@10", "SLA-R@50"))
    by_name = _evaluate()
    assert by_name.equals(by_column)
    assert promotion.promotion_config() == cfg_column
    assert "Δndcg_10[all] >= +0.01" in by_name["rule"].to_list()
    assert by_name.filter(pl.col("rule").str.starts_with("Δ"))["passed"].to_list() == [True, True]


@pytest.mark.parametrize(
    "text, key",
    [
        (BASE + ", nDCG@1O]\n", "measures.7"),
        (BASE + ", P]\n", "measures.7"),
        (_rules("nDCG@10x", "SLA-R@50"), "promotion.lexical_pack_a.primary.metric"),
        (_rules("nDCG@10", "SLA-Q@50"), "promotion.lexical_pack_a.rules.1.metric"),
        (_rules("P@5", "SLA-R@50"), "promotion.lexical_pack_a.primary.metric"),  # not in `measures:`
    ],
)
def test_unknown_measure_is_refused_naming_key_and_file(lens_config, text, key):
    path = lens_config(text)
    with pytest.raises(ValueError) as err:
        promotion.promotion_config()
    msg = str(err.value)
    assert "\n" not in msg and f"`{key}`" in msg and f"LENS_CONFIG={path}" in msg, msg


def test_a_rule_may_name_a_configured_extra(lens_config):
    lens_config(BASE + ", P@5]\n" + _rules("P@5", "SLA-R@50"))
    spec = promotion.resolved_promotion()["lexical_pack_a"]
    assert spec.primary.metric == "P_5" and spec.rules[0].metric == "P_5" and spec.rules[1].metric == "sla_recall_50"


def test_scores_comparisons_and_site_cover_the_extras(tmp_path, lens_config):
    from lens_core.decide.battery import DECISION_METRICS, decision_metrics
    from lens_core.measures.scoring import score
    from lens_core.publish import site

    lens_config(BASE + ", P@5, AP]\n")
    _, _, hits, qrels, agg, queries = _case(tmp_path)
    pq = per_query_metrics(agg, hits, qrels, queries=queries)
    sc = score(pq, b=200, seed=1)
    got = sc.filter(pl.col("slice") == "all")
    for col in ("P_5", "map", "ndcg_10"):
        row = got.filter(pl.col("metric") == col)
        assert row.height == 1 and row["mean"][0] == pytest.approx(pq[col].mean(), abs=1e-12), col
        assert row["ci_low"][0] <= row["mean"][0] <= row["ci_high"][0]
    assert decision_metrics() == DECISION_METRICS + ["P_5", "map"]

    # the site labels measures with their registry names, extras included
    assert site.WHISKER_METRICS == (("ndcg_10", "nDCG@10"), ("sla_recall_50", "SLA-R@50"))
    wide = sc.filter(pl.col("slice") == "all").pivot(
        on="metric", index=["system", "slice"], values=["mean", "ci_low", "ci_high", "n"], aggregate_function="first"
    )
    assert site.extra_measure_metrics(sc["metric"].to_list()) == ["P_5", "map"]  # not success_1, lat_p99, ...
    html = site._slice_block(wide, "all", {}, None, {}, ["P_5", "map"])
    for lab in ("nDCG@10 [95% CI]", "SLA-R@50 [95% CI]", "R@50", "RR@10", "Success@10", ">P@5<", ">AP<"):
        assert lab in html, lab
    assert f"{pq['P_5'].mean():.3f}" in html


def test_compare_cli_takes_registry_names_and_refuses_unknown_ones(tmp_path, lens_config, capsys):
    from lens_cli.main import main

    lens_config(BASE + ", P@5]\n")
    _, _, hits, qrels, agg, queries = _case(tmp_path)
    other = hits.with_columns(pl.lit("sys_b").alias("system"), (pl.col("rank") % 7 + 1 + pl.col("rank")).alias("rank"))
    other = other.unique(["qid", "rank"], keep="first")
    pq = per_query_metrics(
        pl.concat([agg, agg.with_columns(pl.lit("sys_b").alias("system"))]),
        pl.concat([hits, other]),
        qrels,
        queries=queries,
    )
    p = tmp_path / "pq.parquet"
    pq.write_parquet(p)
    outs = []
    for metrics in ("ndcg_10,sla_recall_50,P_5", "nDCG@10,SLA-R@50,P@5"):
        out = tmp_path / f"cmp{len(outs)}.parquet"
        args = ["compare", "--per-query", str(p), "--control", "sys", "--test", "sys_b", "--metrics", metrics]
        assert main(args + ["--bootstrap", "200", "--permutations", "200", "--seed", "1", "--out", str(out)]) == 0
        outs.append(pl.read_parquet(out))
    assert outs[0].equals(outs[1]) and set(outs[0]["metric"]) == {"ndcg_10", "sla_recall_50", "P_5"}
    capsys.readouterr()
    bad = ["compare", "--per-query", str(p), "--control", "sys", "--test", "sys_b", "--metrics", "nDCG@1O"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nDCG@1O" in err and "--metrics" in err
