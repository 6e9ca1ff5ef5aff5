"""`lens-eval`: score (Parquet and TREC), verify, errors as one line."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from lens_core.cli import main
from tests.conftest import REPO


def _trec(tmp_path):
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 r:a.py:1-10 1 9.0 sysA\nq1 Q0 r:b.py:5-9 2 8.0 sysA\nq2 Q0 r:c.py:1-3 1 5.0 sysA\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 r:b.py:5-9 2\nq2 0 r:d.py:1-3 1\n")
    return run, qrels


def test_score_from_trec_files(tmp_path, capsys):
    run, qrels = _trec(tmp_path)
    assert main(["score", "--hits", str(run), "--qrels", str(qrels), "--out", str(tmp_path / "o"), "--bootstrap", "200"]) == 0
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
        out = subprocess.run([sys.executable, "-m", "lens_core.cli", *cmd, "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: lens-eval" in out.stdout
