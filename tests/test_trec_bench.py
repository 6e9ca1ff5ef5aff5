"""Smoke test of benchmarks/bench_trec.py (issue 19): the three shapes at tiny size through
`run_all.py --smoke --only trec`, so the benchmark cannot rot; the means of `lens-eval trec`
and `lens-eval score` agree with pytrec_eval's on each shape."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("pytrec_eval")


def test_bench_trec_smoke(tmp_path):
    out = tmp_path / "REPORT.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--smoke", "--out", str(out), "--only", "trec"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LENS_BENCH_OUT": str(tmp_path / "bench_out"), "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for shape in ("current", "int64", "plain"):
        assert f"trec [{shape}]: `lens-eval trec`, whole process" in text
    assert text.count("`lens-eval score --no-ci`, whole process") == 2  # not on plain docnos
    agree = [float(x) for x in re.findall(r"means \|diff\| ([0-9.e+-]+)", text)]
    assert len(agree) == 5 and max(agree) <= 5e-5  # trec prints 4 decimals; score agrees to 1e-9
