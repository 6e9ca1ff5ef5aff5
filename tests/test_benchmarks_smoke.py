"""Smoke test of the benchmarks (issue 8): `benchmarks/run_all.py --smoke` at tiny sizes, so
the benchmark code cannot rot. Peers that are not installed show as skipped rows.

The fast test covers scoring, statistics, ingest and calibration. The engine (starts the
reference engine server) and the weekly run (the whole Dagster chain) take minutes even at
tiny sizes, so they run in the e2e test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEADER = "| benchmark | ours median [min–max] | peer | peer median [min–max] | ratio | target | holds? |"


def _run_smoke(tmp_path: Path, only: str, timeout: int) -> str:
    out = tmp_path / "REPORT.md"
    env_out = tmp_path / "bench_out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--smoke", "--out", str(out), "--only", only],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "LENS_BENCH_OUT": str(env_out), "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file(), "report not written"
    return out.read_text()


def _summary_rows(text: str) -> list[list[str]]:
    assert HEADER in text, "summary table header missing"
    body = text.split(HEADER, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]  # skip the --- line
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in body]


def _check(text: str, benches: list[str]) -> None:
    rows = _summary_rows(text)
    assert rows, "summary table has no rows"
    assert "## Summary" in text and "- machine:" in text and "- libraries:" in text
    failed = [r for r in rows if "benchmark failed" in r[-1]]
    assert not failed, f"benchmarks failed: {failed}"
    for r in rows:
        if r[1] == "skipped":
            assert r[-1].startswith("n/a:") and len(r[-1]) > 8, f"skipped row without a reason: {r}"
        else:
            # a measured figure: median [min–max] with a number
            assert re.match(r"^[\d.,e+-]+ \[", r[1]), f"row without a measured figure: {r}"
            assert r[-1] in ("yes", "**NO**", "–"), r
    for b in benches:
        assert "## " in text and any(b in ln.lower() for ln in text.splitlines() if ln.startswith("## ")), b


def test_smoke_report_has_summary_table(tmp_path):
    text = _run_smoke(tmp_path, "scoring,statistics,ingest,calibration", timeout=300)
    _check(text, ["scoring", "statistics", "ingest", "calibration"])
    rows = _summary_rows(text)
    names = " ".join(r[0] for r in rows)
    for expected in (
        "scoring 1 system",
        "means equal pytrec_eval",
        "peak RSS",
        "statistics",
        "ingest",
        "calibration fit",
        "calibrator apply p99",
    ):
        assert expected in names, expected
    # our means agree with pytrec_eval on the tie-free workload
    agree = next(r for r in rows if "means equal pytrec_eval" in r[0])
    assert agree[-1] == "yes", agree


def test_smoke_does_not_overwrite_report(tmp_path):
    """--smoke without --out writes under benchmarks/out, never benchmarks/REPORT.md."""
    sys.path.insert(0, str(REPO))
    import benchmarks.run_all as ra

    assert ra.default_out(smoke=False) == REPO / "benchmarks" / "REPORT.md"
    assert ra.default_out(smoke=True) != ra.default_out(smoke=False)
    assert (REPO / "benchmarks" / "out") in ra.default_out(smoke=True).parents  # gitignored
    with pytest.raises(SystemExit):
        ra.main(["--smoke", "--only", "nonexistent"])


@pytest.mark.e2e
def test_smoke_engine_and_weekly(tmp_path):
    text = _run_smoke(tmp_path, "engine,weekly", timeout=900)
    _check(text, ["engine", "weekly"])
