"""`lens-eval`: score (Parquet and TREC), verify, errors as one line."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from lens_cli.main import main
from tests.conftest import REPO


def _trec(tmp_path):
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 r:a.py:1-10 1 9.0 sysA\nq1 Q0 r:b.py:5-9 2 8.0 sysA\nq2 Q0 r:c.py:1-3 1 5.0 sysA\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 r:b.py:5-9 2\nq2 0 r:d.py:1-3 1\n")
    return run, qrels


def test_score_from_trec_files(tmp_path, capsys):
    run, qrels = _trec(tmp_path)
    assert (
        main(["score", "--hits", str(run), "--qrels", str(qrels), "--out", str(tmp_path / "o"), "--bootstrap", "200"])
        == 0
    )
    pq = pl.read_parquet(tmp_path / "o" / "per_query.parquet").sort("qid")
    assert pq["mrr_10"].to_list() == [0.5, 0.0]
    assert pq["ndcg_10"][0] == pytest.approx((2 / 1.584962500721156) / 2.0)
    assert (tmp_path / "o" / "scores.parquet").is_file()


def test_score_errors_name_the_line(tmp_path, capsys):
    run, qrels = _trec(tmp_path)
    run.write_text("q1 Q0 nospan 1 9.0 sysA\n")
    assert main(["score", "--hits", str(run), "--qrels", str(qrels), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.txt:1" in err[0] and "repo:path:start-end" in err[0]
    assert main(["score", "--hits", str(tmp_path / "missing.parquet"), "--qrels", str(qrels), "--out", "x"]) == 2


def test_verify_exit_codes(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 1
    assert main(["verify", str(tmp_path / "nope")]) == 2


def test_help_on_every_command():
    for cmd in ([], ["score"], ["compare"], ["verify"], ["run"]):
        out = subprocess.run(
            [sys.executable, "-m", "lens_cli", *cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "usage: lens-eval" in out.stdout


def _per_query(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 200
    base = rng.random(n)
    rows = []
    for system, shift in (("ctl", 0.0), ("tst", 0.05)):
        for i in range(n):
            v = float(np.clip(base[i] + shift + rng.normal(0, 0.05), 0, 1))
            rows.append(
                {
                    "run_id": "r",
                    "system": system,
                    "qid": f"q{i:03d}",
                    "suite": "s",
                    "intent": "nl" if i % 2 else "identifier",
                    "language": "python",
                    "lat_ms": 10.0,
                    "ndcg_10": v,
                    "recall_50": v,
                    "sla_recall_50": v,
                    "mrr_10": v,
                    "success_1": 0.0,
                    "success_5": 1.0,
                    "success_10": 1.0,
                }
            )
    p = tmp_path / "per_query.parquet"
    pl.DataFrame(rows).write_parquet(p)
    return p


def test_compare_reports_deltas_cis_and_holm(tmp_path, capsys):
    p = _per_query(tmp_path)
    out = tmp_path / "cmp.parquet"
    assert (
        main(
            [
                "compare",
                "--per-query",
                str(p),
                "--control",
                "ctl",
                "--test",
                "tst",
                "--bootstrap",
                "500",
                "--permutations",
                "2000",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = pl.read_parquet(out)
    assert res.columns[:9] == ["control", "test", "slice", "metric", "delta", "ci_low", "ci_high", "p_value", "p_holm"]
    row = res.filter((pl.col("slice") == "all") & (pl.col("metric") == "ndcg_10")).row(0, named=True)
    assert 0.03 < row["delta"] < 0.07 and row["ci_low"] > 0 and row["p_holm"] < 0.01
    assert (res["p_holm"] >= res["p_value"]).all()
    assert {"intent=nl", "intent=identifier"} <= set(res["slice"].to_list())


def test_compare_unknown_system_is_one_line(tmp_path, capsys):
    p = _per_query(tmp_path)
    assert main(["compare", "--per-query", str(p), "--control", "ctl", "--test", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "ctl" in err[0]


def test_score_parquet_reads_one_system_at_a_time(tmp_path):
    """Parquet hits with row groups that span two systems: the systems come from the
    row-group statistics (mixed groups read), each system is scored from a lazy scan, and
    the result equals the in-memory per_query_metrics on the same data."""
    import numpy as np
    import pyarrow.parquet as papq

    from lens_cli.main import _agg_from_hits, _parquet_systems
    from lens_core.common.contracts import HITS_SCHEMA, QRELS_SCHEMA
    from lens_core.common.tables import conform
    from lens_core.measures.metrics import per_query_metrics

    rng = np.random.default_rng(4)
    rows, qrows = [], []
    for q in range(40):
        for s in range(20):
            qrows.append((f"q{q:02d}", "r", f"f{s}.py", 1 + 10 * s, 9 + 10 * s, int(rng.integers(0, 3)), "t"))
    for system in ("sa", "sb", "sc"):
        for q in range(40):
            for rank, s in enumerate(rng.permutation(30)[:60], start=1):
                start = 1 + 10 * int(s) + int(rng.integers(0, 3))
                rows.append(
                    (
                        "run",
                        system,
                        f"q{q:02d}",
                        rank,
                        "r",
                        f"f{s}.py",
                        start,
                        start + 8,
                        100.0 - rank,
                        True,
                        False,
                        False,
                        None,
                        bool(rng.random() < 0.9),
                    )
                )
    hits = pl.DataFrame(rows, schema=[f.name for f in HITS_SCHEMA], orient="row")
    qrels = pl.DataFrame(qrows, schema=[f.name for f in QRELS_SCHEMA], orient="row")
    hp, qp = tmp_path / "hits.parquet", tmp_path / "qrels.parquet"
    papq.write_table(conform(hits, HITS_SCHEMA, "hits"), hp, row_group_size=700)  # groups span systems
    papq.write_table(conform(qrels, QRELS_SCHEMA, "qrels"), qp)
    assert _parquet_systems(hp) == [("run", "sa"), ("run", "sb"), ("run", "sc")]
    assert main(["score", "--hits", str(hp), "--qrels", str(qp), "--out", str(tmp_path / "o"), "--no-ci"]) == 0
    got = pl.read_parquet(tmp_path / "o" / "per_query.parquet")
    h = pl.from_arrow(conform(hits, HITS_SCHEMA, "hits")).filter(pl.col("rank") <= 50)
    q = pl.from_arrow(conform(qrels, QRELS_SCHEMA, "qrels"))
    want = per_query_metrics(_agg_from_hits(h, q), h, q).select(got.columns)
    assert got.height == 3 * 40
    assert got.sort("system", "qid").equals(want.sort("system", "qid"))
