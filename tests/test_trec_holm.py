"""Holm over real tests only (issue 19): a slice holding the same queries as an earlier one
(`all` first) is an alias, not another member of the Holm family."""

from __future__ import annotations

import numpy as np
import polars as pl

from lens_core.stats.compare import compare, holm

METRICS = ["ndcg_10", "recall_50", "mrr_10"]


def _table(n: int, intents, languages, suites, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for system, shift in (("ctl", 0.0), ("tst", 0.03)):
        base = np.random.default_rng(seed + 1).random((n, len(METRICS)))
        vals = np.clip(base + shift + rng.normal(0, 0.05, (n, len(METRICS))), 0, 1)
        for i in range(n):
            rows.append(
                {
                    "system": system,
                    "qid": f"q{i:04d}",
                    "intent": intents[i % len(intents)],
                    "language": languages[i % len(languages)],
                    "suite": suites[i % len(suites)],
                    **{m: float(vals[i, j]) for j, m in enumerate(METRICS)},
                }
            )
    return pl.DataFrame(rows)


def test_trec_input_family_is_the_all_slice_only():
    pq = _table(200, ["all"], ["all"], ["all"])
    res = compare(pq, "ctl", "tst", METRICS, b_ci=500, b_perm=2000, seed=3)
    assert res.height == 4 * len(METRICS)  # all + intent=all + language=all + suite=all
    main = res.filter(pl.col("slice") == "all")
    # Holm over 3 tests (the metrics), not 12
    assert np.allclose(main["p_holm"].to_numpy(), holm(main["p_value"].to_numpy()))
    assert (main["p_holm"].to_numpy() <= np.minimum(3 * main["p_value"].to_numpy(), 1.0) + 1e-12).all()
    aliases = res.filter(pl.col("slice") != "all")
    assert aliases["reason"].str.contains("alias of slice 'all'").all()
    for m in METRICS:
        a = main.filter(pl.col("metric") == m).row(0, named=True)
        for r in aliases.filter(pl.col("metric") == m).iter_rows(named=True):
            assert (r["delta"], r["ci_low"], r["ci_high"], r["p_value"], r["p_holm"], r["n"]) == (
                a["delta"],
                a["ci_low"],
                a["ci_high"],
                a["p_value"],
                a["p_holm"],
                a["n"],
            )


def test_real_slices_keep_the_whole_family():
    pq = _table(240, ["nav", "code", "doc"], ["py", "go"], ["s1", "s2", "s3", "s4", "s5"])
    res = compare(pq, "ctl", "tst", METRICS, b_ci=500, b_perm=2000, seed=4)
    assert not res["reason"].fill_null("").str.contains("alias").any()
    p = res["p_value"].to_numpy()
    assert np.allclose(res["p_holm"].to_numpy(), holm(p))
    assert res.height == (1 + 3 + 2 + 5) * len(METRICS)


def test_a_slice_equal_to_another_slice_is_an_alias_of_the_first():
    # intent and language split the queries the same way: language=x is intent=a again
    n = 120
    pq = _table(n, ["a", "b"], ["x", "y"], ["s1", "s2", "s3"])
    res = compare(pq, "ctl", "tst", METRICS, b_ci=500, b_perm=2000, seed=5, aliases="any")
    lang = res.filter(pl.col("slice").str.starts_with("language="))
    assert lang["reason"].str.contains("alias of slice 'intent=").all()
    real = res.filter(~pl.col("reason").fill_null("").str.contains("alias"))
    assert real.height == (1 + 2 + 3) * len(METRICS)
    assert np.allclose(real["p_holm"].to_numpy(), holm(real["p_value"].to_numpy()))
    # "any" is the default (the weekly chain's suites with one intent are such slices)
    dflt = compare(pq, "ctl", "tst", METRICS, b_ci=500, b_perm=2000, seed=5)
    assert dflt.equals(res)
    # "all" keeps them: only slices holding every query are aliases
    only_all = compare(pq, "ctl", "tst", METRICS, b_ci=500, b_perm=2000, seed=5, aliases="all")
    assert not only_all["reason"].fill_null("").str.contains("alias").any()
    assert np.allclose(only_all["p_holm"].to_numpy(), holm(only_all["p_value"].to_numpy()))


def test_lens_eval_compare_on_trec_input_counts_each_metric_once(tmp_path, capsys):
    from lens_cli.main import main

    pq = _table(150, ["all"], ["all"], ["all"])
    pq = pq.with_columns(pl.col("recall_50").alias("sla_recall_50"))
    p = tmp_path / "per_query.parquet"
    pq.write_parquet(p)
    out = tmp_path / "cmp.parquet"
    code = main(
        [
            "compare",
            "--per-query",
            str(p),
            "--control",
            "ctl",
            "--test",
            "tst",
            "--bootstrap",
            "300",
            "--permutations",
            "2000",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    capsys.readouterr()
    assert code == 0
    res = pl.read_parquet(out)
    main_rows = res.filter(pl.col("slice") == "all")
    assert main_rows.height == 4  # the default metrics, slice all: a family of 4, not 16
    assert np.allclose(main_rows["p_holm"].to_numpy(), holm(main_rows["p_value"].to_numpy()))
    assert res.filter(pl.col("slice") != "all")["reason"].str.contains("alias").all()
