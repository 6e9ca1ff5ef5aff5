"""The week's verdict (issue 23): gates at a glance with insufficient never shown as pass, the
canary path, the A/A line, Δ against the previous published week, and the verdict's order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from lens_core.decide.gate_view import failures_first, gate_outcome, gate_overview
from lens_core.measures.headline import ece_figures, headline_figures
from lens_core.publish.verdict import (
    BundleOutcome,
    PreviousWeek,
    aa_verdict,
    canary_paths,
    failed_gates,
    outcome_frame,
    outcome_from_frame,
    previous_published_week,
    release_verdict,
    week_deltas,
)
from lens_core.publish.verdict_text import summary_lines, verdict_markdown
from tests.conftest import REPO, new_dagster_home


def _gates() -> pl.DataFrame:
    rows = [
        ("schema", "", 9.0, None, True, True, "pass", "ok"),
        ("ece", "a", 0.01, "0.02", True, True, "pass", "max ECE 0.01"),
        ("ece", "b", None, "0.02", True, True, "insufficient", "too few labels"),
        ("ece", "c", None, "0.02", True, True, "insufficient", "too few labels"),
        ("pool", "a", 0.8, "0.9", True, False, "fail", "judged@10 = 0.8 (>= 0.9)"),
        ("tail", "b", 2.2, "2.0", False, False, "fail", "p99/p95 = 2.2 (<= 2.0)"),
        ("cost", "a", 0.01, "0.05", False, True, "pass", "ok"),
    ]
    return pl.DataFrame(
        rows,
        schema=["gate", "subject", "value", "threshold", "blocking", "passed", "status", "reason"],
        orient="row",
    )


def test_gate_overview_never_calls_insufficient_a_pass():
    ov = gate_overview(_gates())
    verdicts = dict(zip(ov["gate"].to_list(), ov["verdict"].to_list()))
    assert verdicts == {"pool": "fail", "tail": "fail", "ece": "insufficient", "schema": "pass", "cost": "pass"}
    # failures first (blocking before WARN), then insufficient, then passes
    assert ov["gate"].to_list()[:3] == ["pool", "tail", "ece"]
    ece = ov.filter(pl.col("gate") == "ece").row(0, named=True)
    assert (ece["pass"], ece["fail"], ece["insufficient"]) == (1, 0, 2)


def test_failures_first_orders_the_gate_table():
    ordered = failures_first(_gates())
    assert ordered.select("gate", "status").rows()[:4] == [
        ("pool", "fail"),
        ("tail", "fail"),
        ("ece", "insufficient"),
        ("ece", "insufficient"),
    ]


def test_gate_outcome_levels_and_one_line_descriptions():
    g = _gates()
    ece = gate_outcome(g.filter(pl.col("gate") == "ece"), "ece", blocking=True, partition="2026-11-15")
    assert not ece.passed and ece.level == "warn" and ece.insufficient == 2
    assert "insufficient" in ece.description and "2026-11-15" in ece.description and "\n" not in ece.description
    pool = gate_outcome(g.filter(pl.col("gate") == "pool"), "pool", blocking=True)
    assert not pool.passed and pool.level == "error" and "judged@10" in pool.description
    tail = gate_outcome(g.filter(pl.col("gate") == "tail"), "tail", blocking=False)
    assert not tail.passed and tail.level == "warn"
    ok = gate_outcome(g.filter(pl.col("gate") == "schema"), "schema", blocking=True)
    assert ok.passed and ok.level == "pass"
    missing = gate_outcome(g.filter(pl.col("gate") == "nope"), "nope", blocking=True)
    assert not missing.passed and missing.level == "error" and "not evaluated" in missing.description


def test_failed_gates_blocking_first_with_reasons():
    f = failed_gates(_gates())
    assert f.select("gate", "blocking").rows() == [("pool", True), ("tail", False)]
    assert f["reason"].to_list()[0].startswith("judged@10")


def test_canary_paths():
    dec = pl.DataFrame(
        [
            {
                "seq": None,
                "phase": "aa",
                "action": "hold",
                "from_pct": None,
                "to_pct": None,
                "reason": "canary not started: x",
                "test": "t0",
            },
            {
                "seq": 0,
                "phase": "aa",
                "action": "advance",
                "from_pct": 100,
                "to_pct": 5,
                "reason": "A/A green",
                "test": "t1",
            },
            {
                "seq": 1,
                "phase": "ab",
                "action": "advance",
                "from_pct": 5,
                "to_pct": 25,
                "reason": "3 green",
                "test": "t1",
            },
            {
                "seq": 2,
                "phase": "ab",
                "action": "advance",
                "from_pct": 25,
                "to_pct": 50,
                "reason": "3 green",
                "test": "t1",
            },
            {
                "seq": 3,
                "phase": "ab",
                "action": "hold",
                "from_pct": 50,
                "to_pct": 50,
                "reason": "stream exhausted",
                "test": "t1",
            },
            {
                "seq": 0,
                "phase": "ab",
                "action": "hold",
                "from_pct": 5,
                "to_pct": 5,
                "reason": "red window",
                "test": "t2",
            },
            {"seq": 1, "phase": "ab", "action": "revert", "from_pct": 5, "to_pct": 0, "reason": "2 red", "test": "t2"},
        ]
    )
    paths = dict(zip(*canary_paths(dec).select("test", "path").to_dict(as_series=False).values()))
    assert paths["t0"] == "A/A: hold"
    assert paths["t1"] == "A/A ok → 5% → 25% → 50%: hold"
    assert paths["t2"] == "A/A ok → 5% → 0% (reverted): revert"


def _cmp(p_holm: float) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "control": "base",
                "test": "base__aa",
                "slice": "all",
                "metric": "ndcg_10",
                "delta": -0.01,
                "ci_low": -0.05,
                "ci_high": 0.03,
                "p_holm": p_holm,
            },
            {
                "control": "base",
                "test": "v1",
                "slice": "all",
                "metric": "ndcg_10",
                "delta": 0.02,
                "ci_low": 0.0,
                "ci_high": 0.04,
                "p_holm": 0.01,
            },
        ]
    )


def test_aa_verdict():
    sig, line = aa_verdict(_cmp(0.9), alpha=0.05)
    assert sig is False and line.startswith("A/A clean") and "p_holm 0.9" in line
    sig, line = aa_verdict(_cmp(0.01), alpha=0.05)
    assert sig is True and "SIGNIFICANT" in line
    assert aa_verdict(pl.DataFrame(), 0.05)[0] is None


def _scores(mean: float, lo: float, hi: float, systems=("base", "v1")) -> pl.DataFrame:
    rows = []
    for s in systems:
        for m in ("ndcg_10", "sla_recall_50", "lat_p95", "lat_p99", "judged_10", "mrr_10"):
            rows.append({"system": s, "slice": "all", "metric": m, "mean": mean, "ci_low": lo, "ci_high": hi, "n": 100})
        rows.append(
            {
                "system": s,
                "slice": "intent=nl",
                "metric": "ndcg_10",
                "mean": 0.0,
                "ci_low": 0.0,
                "ci_high": 0.0,
                "n": 10,
            }
        )
    return pl.DataFrame(rows)


def test_week_deltas_unpaired_ci():
    d = week_deltas(_scores(0.5, 0.4, 0.6), _scores(0.4, 0.3, 0.5, systems=("base",)))
    assert d.select("system", "metric").rows() == [("base", "ndcg_10"), ("base", "sla_recall_50")]
    r = d.row(0, named=True)
    assert r["delta"] == pytest.approx(0.1)
    assert r["ci_high"] - r["delta"] == pytest.approx(0.1 * 2**0.5)  # two CIs of half-width 0.1
    assert r["moved"] is False
    tight = week_deltas(_scores(0.5, 0.49, 0.51), _scores(0.4, 0.39, 0.41))
    assert tight["moved"].all()


def _bundle(root, name, partition, green, scores=None, created=0):
    b = root / "bundles" / name
    b.mkdir(parents=True)
    att = {"fingerprint": name, "partition": partition, "all_blocking_green": green, "created_ms": created}
    (b / "attestation.json").write_text(json.dumps(att))
    (scores if scores is not None else _scores(0.4, 0.3, 0.5)).write_parquet(b / "scores.parquet")


def test_previous_published_week_is_the_latest_green_week_before(tmp_path):
    assert previous_published_week(tmp_path, "2026-11-15") is None
    _bundle(tmp_path, "v22_a_1", "2026-11-01", True)
    _bundle(tmp_path, "v22_b_1", "2026-11-08", True, created=1)
    _bundle(tmp_path, "v22_b_2", "2026-11-08", True, created=2)  # a re-run of the week: the newest counts
    _bundle(tmp_path, "v22_c_1", "2026-11-08", False, created=3)  # red: never published
    _bundle(tmp_path, "v22_d_1", "2026-11-15", True)  # the week itself
    prev = previous_published_week(tmp_path, "2026-11-15")
    assert (prev.partition, prev.fingerprint) == ("2026-11-08", "v22_b_2")
    assert previous_published_week(tmp_path, "2026-11-08").fingerprint == "v22_a_1"


def _heroes() -> pl.DataFrame:
    return pl.DataFrame(
        [{"pack": "p1", "hero": "v1", "reason": "best"}, {"pack": "p2", "hero": None, "reason": "no variant passes"}],
        schema={"pack": pl.String, "hero": pl.String, "reason": pl.String},
    )


def test_release_verdict_not_published_leads_with_why():
    out = BundleOutcome("v22_new", False, previous_published="v22_old", failed_blocking=["pool[a]"])
    prev = PreviousWeek("2026-11-08", "v22_old", _scores(0.4, 0.3, 0.5))
    v = release_verdict(
        "2026-11-15", out, _gates(), _heroes(), pl.DataFrame(), _cmp(0.9), _scores(0.5, 0.4, 0.6), prev, baseline="base"
    )
    assert v.headline.startswith("NOT PUBLISHED v22_new for week 2026-11-15: blocking gate(s) failed: pool")
    assert "v22_old" in v.why and v.previous_fingerprint == "v22_old"
    assert v.heroes.select("pack", "hero").rows() == [("p1", "v1"), ("p2", "none")]
    assert v.focus == ["base", "v1"]
    nums = v.numbers()
    assert nums["published"] == 0 and nums["blocking_gates_failed"] == 1 and nums["warn_gates_failed"] == 1
    assert nums["subjects_insufficient"] == 2 and nums["heroes_promoted"] == 1
    assert nums["delta_ndcg_10/base"] == pytest.approx(0.1)
    md = verdict_markdown(v)
    assert md.index("NOT PUBLISHED") < md.index("## Failed gates") < md.index("## Heroes") < md.index("## Canary")
    assert md.index("## A/A") < md.index("## Against the previous published week")
    lines = summary_lines(v)
    assert lines[0] == v.headline and any("ERROR pool[a]" in ln for ln in lines)


def test_release_verdict_published_and_without_a_previous_week():
    out = BundleOutcome("v22_new", True, previous_published=None)
    green = _gates().filter(pl.col("status") != "fail")
    v = release_verdict("2026-11-15", out, green, _heroes(), pl.DataFrame(), _cmp(0.9), _scores(0.5, 0.4, 0.6), None)
    assert (
        v.published and v.headline.startswith("PUBLISHED v22_new") and "2 subject(s) judged on too little data" in v.why
    )
    assert v.previous_week is None and v.deltas.height == 0
    assert "no previous published week" in verdict_markdown(v)
    older = BundleOutcome(
        "v22_old", False, "v22_new", refused="partition 2026-11-08 is older than the published 2026-11-15"
    )
    v = release_verdict("2026-11-08", older, green, _heroes(), pl.DataFrame(), _cmp(0.9), _scores(0.5, 0.4, 0.6), None)
    assert v.headline.startswith("NOT PUBLISHED v22_old") and "older than the published" in v.why
    none = release_verdict(
        "2026-11-15", None, _gates(), _heroes(), pl.DataFrame(), _cmp(0.9), _scores(0.5, 0.4, 0.6), None
    )
    assert not none.published and "no bundle was recorded" in none.why


def test_outcome_round_trips_through_a_table():
    o = BundleOutcome("v22_x", True, "v22_w", ["pool[a]"], "/b", "/s", "older")
    assert outcome_from_frame(outcome_frame(o)) == o
    assert outcome_from_frame(pl.DataFrame()) is None


def test_headline_figures_are_numbers_per_metric_and_system():
    figs = headline_figures(_scores(0.5, 0.4, 0.6), systems=["base"])
    assert figs == {f"{m}/base": 0.5 for m in ("ndcg_10", "sla_recall_50", "lat_p95", "lat_p99", "judged_10")}
    assert list(figs)[0] == "ndcg_10/base"
    assert ece_figures(_gates()) == {"ece/a": 0.01}  # insufficient systems have no number, not a zero


def test_release_verdict_asset_and_partitioned_checks_are_defined():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("release_verdict"))
    assert {k.to_user_string() for k in node.parent_keys} >= {
        "release_bundle",
        "gate_summary",
        "heroes",
        "canary_decisions",
    }
    spec = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey("release_verdict"), "published"))
    assert spec.blocking and spec.partitions_def is not None
    gate = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey("gate_summary"), "gate_pool"))
    # publication is release_bundle's decision (so the verdict runs on a red week); pages stay P0
    assert not gate.blocking and gate.partitions_def is not None and gate.metadata["page_severity"] == "P0"
    assert "insufficient" in gate.description


def test_hero_table_kinds_say_parquet():
    from definitions import defs

    kinds = defs.resolve_asset_graph().get(dg.AssetKey("hero_table")).kinds
    assert "parquet" in kinds and "csv" not in kinds


def _metadata(instance, asset: str, partition: str) -> dict:
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert recs, f"{asset} has no materialisation for {partition}"
    return dict(recs[0].asset_materialization.metadata)


@pytest.mark.e2e
def test_lens_eval_run_summarises_and_records_numbers_over_weeks(tmp_path):
    """Two weeks through `lens-eval run` (as `make demo` runs it, with a DAGSTER_HOME): runs
    launched through the code location (listed under weekly_lens_job, with their partition),
    progress lines and a compact summary instead of Dagster's DEBUG stream and the full gate table
    (that goes to a file); the instance holds the verdict first, headline figures as numbers per
    partition, seeds as text and gate checks that carry their partition. (Whether a week is
    published depends on the gates: both outcomes are checked for what they must show.)"""
    home, data = new_dagster_home(tmp_path / "dagster_home"), tmp_path / "data"
    env = {**os.environ, "LENS_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    for k in ("PAGER_URL", "LENS_CONFIG", "LENS_FULL_GRIDS"):
        env.pop(k, None)
    weeks = ("2026-11-08", "2026-11-15")
    outs = []
    for pk in weeks:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "lens_cli",
                "run",
                "--source",
                "sim",
                "--queries-per-suite",
                "30",
                "--partition",
                pk,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode in (0, 3), (p.stdout + p.stderr)[-4000:]  # 3: a blocking gate kept the last green
        outs.append((p.returncode, p.stdout + p.stderr))
    (rc1, first), (_, second) = outs
    lines = first.splitlines()
    assert " - DEBUG - " not in first and "STEP_SUCCESS" not in first and "Traceback" not in first
    assert any(re.match(r"\s+\[\s*\d+/\d+\] (ok|red)\s+release_verdict[ :]", ln) for ln in lines), first[-3000:]
    verdict = next(ln for ln in lines if ln.startswith(("PUBLISHED ", "NOT PUBLISHED ")))
    assert verdict.startswith("PUBLISHED v22_" if rc1 == 0 else "NOT PUBLISHED v22_") and "week 2026-11-08" in verdict
    assert "| gate | subject" not in first  # the full gate table is in gates.md
    assert len(lines) < 120, len(lines)
    for key in ("fingerprint:", "bundle:", "site:", "verdict:", "ui:"):
        assert any(ln.startswith(key) for ln in lines), key
    report = data / "reports" / "2026-11-08"
    assert (report / "summary.txt").read_text().splitlines()[0] == verdict
    assert (report / "gates.md").read_text().count("\n| ") > 50 and (report / "verdict.md").is_file()
    # Δ against the previous published week, when there is one
    assert ("vs 2026-11-08 (v22_" in second) if rc1 == 0 else ("vs previous published week: none yet" in second)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="weekly_lens_job"))
        assert sorted(r.tags.get("dagster/partition") for r in runs) == list(weeks)
        assert all(r.remote_job_origin and r.remote_job_origin.location_name == "lens_pipeline" for r in runs)
        for pk in weeks:
            v = _metadata(instance, "release_verdict", pk)
            assert list(v)[:6] == ["verdict", "published", "why", "fingerprint", "previous_fingerprint", "failed_gates"]
            assert v["published"].value in (0, 1) and isinstance(v["ndcg_10/lens_v22"].value, float)
            s = _metadata(instance, "scores", pk)
            for m in ("ndcg_10", "sla_recall_50", "lat_p95", "lat_p99", "judged_10"):
                assert isinstance(s[f"{m}/lens_v22"], dg.FloatMetadataValue), m
            assert isinstance(s["seed"], dg.TextMetadataValue)
            seeds = _metadata(instance, "comparisons", pk)["seeds"].value
            assert seeds and all(isinstance(x, str) for x in seeds.values())
        assert _metadata(instance, "release_verdict", weeks[0])["published"].value == int(rc1 == 0)
        key = dg.AssetCheckKey(dg.AssetKey("gate_summary"), "gate_ece")
        evals = [
            r.event.dagster_event.event_specific_data
            for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
            if r.event is not None and r.event.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert sorted(e.partition for e in evals) == list(weeks)
        assert all(e.description and "\n" not in e.description for e in evals)


def test_the_verdict_shows_the_a_a_decision_the_week_took_when_given():
    """The hero decisions judge the A/A by TOST (issue 17); the verdict shows that decision, not
    the point-null comparison row, when the asset passes it."""
    out = BundleOutcome("v22_new", True, previous_published=None)
    green = _gates().filter(pl.col("status") != "fail")
    args = ("2026-11-15", out, green, _heroes(), pl.DataFrame(), _cmp(0.9), _scores(0.5, 0.4, 0.6), None)
    default = release_verdict(*args)
    assert default.aa.startswith("A/A") and "TOST" not in default.aa
    broken = release_verdict(*args, aa=(True, "A/A NOT shown equivalent: the setup is broken (TOST)"))
    assert broken.aa_significant is True and broken.aa.startswith("A/A NOT shown equivalent")
