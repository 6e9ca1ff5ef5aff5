"""lens_core.monitor.monitoring: the pure computations behind the SPEC §13 monitoring jobs."""

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from lens_core.common import calendar
from lens_core.common.hashing import atomic_write_json, sha256_file
from lens_core.monitor import monitoring as M

ET = ZoneInfo("US/Eastern")


def et(*a):
    return datetime(*a, tzinfo=ET)


# --------------------------------------------------------------------------------------------- time
@pytest.mark.parametrize(
    "tick, expected",
    [
        (et(2026, 11, 22, 2, 0), "2026-11-22"),  # the Sunday run's own tick
        (et(2026, 11, 22, 1, 59), "2026-11-15"),  # before 02:00: last week
        (et(2026, 11, 24, 2, 30), "2026-11-22"),  # a Tuesday nightly
        (et(2026, 11, 28, 23, 59), "2026-11-22"),  # Saturday night
        (et(2027, 3, 14, 3, 0), "2027-03-14"),  # spring forward: 02:00 does not exist, tick at 03:00 EDT
        (et(2027, 3, 14, 1, 59), "2027-03-07"),
        (et(2026, 11, 1, 2, 0), "2026-11-01"),  # fall back Sunday
        (et(2026, 11, 1, 1, 30), "2026-10-25"),  # 01:30 happens twice; both before 02:00
    ],
)
def test_weekly_partition_for(tick, expected):
    assert calendar.weekly_partition_for(tick) == expected
    assert calendar.weekly_partition_for(tick.astimezone(timezone.utc)) == expected


def test_weekly_start_spring_forward_is_0300_edt():
    s = calendar.weekly_start("2027-03-14")
    assert s.utcoffset().total_seconds() == -4 * 3600 and (s.hour, s.minute) == (3, 0)
    with pytest.raises(ValueError, match="not a Sunday"):
        calendar.weekly_start("2027-03-15")
    with pytest.raises(ValueError, match="no timezone"):
        calendar.weekly_partition_for(datetime(2027, 3, 14, 3))


# --------------------------------------------------------------------------------------------- micro-suites
def _queries(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    # suite A: 3000 queries, uneven strata over 2 intents x 4 languages
    langs, p = ["python", "go", "typescript", "rust"], [0.5, 0.25, 0.15, 0.10]
    for i in range(3000):
        rows.append((f"a{i:05d}", "suite_a", "nl" if rng.random() < 0.7 else "identifier", str(rng.choice(langs, p=p))))
    for i in range(1200):
        rows.append((f"b{i:05d}", "suite_b", "structural", str(rng.choice(langs))))
    for i in range(500):  # smaller than 800: all taken
        rows.append((f"c{i:05d}", "suite_c", "nl", str(rng.choice(langs))))
    return pl.DataFrame(rows, schema=["qid", "suite", "intent", "language"], orient="row").with_columns(
        pl.format("text {}", pl.col("qid")).alias("text")
    )


def test_micro_suites_stratified_and_sized():
    q = _queries()
    sample, report = M.sample_micro_suites(q, "2026-11-17")
    sizes = dict(sample.group_by("suite").len().iter_rows())
    assert sizes == {"suite_a": 800, "suite_b": 800, "suite_c": 500}
    assert sample["qid"].n_unique() == sample.height
    assert set(sample["qid"]) <= set(q["qid"])
    # per (intent x language) proportions within one query of the exact quota
    for (suite,), part in sample.partition_by("suite", as_dict=True).items():
        avail = q.filter(pl.col("suite") == suite).group_by("intent", "language").len()
        got = part.group_by("intent", "language").len()
        j = avail.join(got, on=["intent", "language"], how="left", suffix="_got").fill_null(0)
        n, total = part.height, avail["len"].sum()
        for r in j.iter_rows(named=True):
            assert abs(r["len_got"] - r["len"] * n / total) < 1.0 + 1e-9
    summary = M.micro_suite_summary(report)
    c = summary.filter(pl.col("suite") == "suite_c").row(0, named=True)
    assert c["took_all"] and "only 500 queries" in c["note"]
    assert summary.filter(pl.col("suite") == "suite_a")["note"][0] is None


def test_micro_suites_deterministic_per_date_and_order_free():
    q = _queries()
    a, _ = M.sample_micro_suites(q, "2026-11-17")
    b, _ = M.sample_micro_suites(q.sample(fraction=1.0, shuffle=True, seed=3), "2026-11-17")
    c, _ = M.sample_micro_suites(q, "2026-11-18")
    assert a["qid"].to_list() == b["qid"].to_list()
    assert set(a["qid"]) != set(c["qid"])


def test_micro_suites_bad_input():
    with pytest.raises(ValueError, match="lacks column"):
        M.sample_micro_suites(pl.DataFrame({"qid": ["a"], "suite": ["s"]}), "2026-11-17")
    with pytest.raises(ValueError):
        M.sample_micro_suites(_queries(), "not-a-date")
    dup = pl.DataFrame({"qid": ["a", "a"], "suite": ["s", "s"], "intent": ["nl"] * 2, "language": ["go"] * 2})
    with pytest.raises(ValueError, match="appears 2 times"):
        M.sample_micro_suites(dup, "2026-11-17")


# --------------------------------------------------------------------------------------------- pool audit
def _pool(members):
    return pl.DataFrame(
        [(q, "r", f"p{m}", 1, 10, systems, 1) for q, m, systems in members],
        schema={
            "qid": pl.String,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "systems": pl.List(pl.String),
            "best_rank": pl.Int32,
        },
        orient="row",
    )


def test_pool_diff_counts_and_jaccard():
    prev = _pool([("q1", 1, ["x", "y"]), ("q1", 2, ["x"]), ("q2", 3, ["y"])])
    cur = _pool([("q1", 1, ["x"]), ("q1", 4, ["x", "y"]), ("q2", 3, ["y"])])
    d = {r["system"]: r for r in M.pool_diff(prev, cur).iter_rows(named=True)}
    # x: prev {1,2} cur {1,4} -> added 1, removed 1, kept 1, J = 1/3
    assert (d["x"]["added"], d["x"]["removed"], d["x"]["kept"]) == (1, 1, 1)
    assert d["x"]["jaccard"] == pytest.approx(1 / 3)
    # y: prev {1,3} cur {4,3} -> J = 1/3
    assert d["y"]["jaccard"] == pytest.approx(1 / 3)
    # all (by member): prev {1,2,3} cur {1,3,4} -> kept 2, union 4
    assert (d["all"]["previous"], d["all"]["current"], d["all"]["kept"]) == (3, 3, 2)
    assert d["all"]["jaccard"] == pytest.approx(0.5)
    same = M.pool_diff(prev, prev)
    assert same["jaccard"].to_list() == [1.0] * same.height and same["added"].sum() == 0


# --------------------------------------------------------------------------------------------- tripwires
def _scores(fc):
    rows = [(s, "all", "file_credit", v, v, v, 100) for s, v in fc.items()]
    return pl.DataFrame(rows, schema=["system", "slice", "metric", "mean", "ci_low", "ci_high", "n"], orient="row")


def test_tripwires_file_credit_and_flatline():
    pq = pl.DataFrame(
        {"system": ["a"] * 3 + ["b"] * 3, "qid": list("xyz") * 2, "ndcg_10": [0.1, 0.5, 0.9, 0.4, 0.4, 0.4]}
    )
    t = M.evaluate_tripwires(_scores({"a": 0.01, "b": 0.06}), pq)
    tripped = {(r["tripwire"], r["system"]) for r in t.filter(pl.col("tripped")).iter_rows(named=True)}
    assert tripped == {("file_credit", "b"), ("flatline", "b")}
    missing = M.evaluate_tripwires(None, None)
    assert missing["tripped"].all() and missing["reason"].str.contains("missing").all()


# --------------------------------------------------------------------------------------------- heroes
def test_hero_vs_baseline_flags_a_regression():
    rng = np.random.default_rng(1)
    n = 300
    base = rng.uniform(0.3, 0.9, n)
    rows = []
    for sysname, shift in (("base", 0.0), ("pa_good", 0.0), ("pa_bad", -0.2), ("pb_up", 0.1)):
        v = np.clip(base + shift + rng.normal(0, 0.02, n), 0, 1)
        rows += [
            {"system": sysname, "qid": f"q{i}", "ndcg_10": float(v[i]), "sla_recall_50": float(v[i])} for i in range(n)
        ]
    pq = pl.DataFrame(rows)
    scores = (
        pq.group_by("system")
        .agg(pl.col("ndcg_10").mean().alias("mean"))
        .with_columns(pl.lit("all").alias("slice"), pl.lit("ndcg_10").alias("metric"))
    )
    packs = {"pa_good": "pack_a", "pa_bad": "pack_a", "pb_up": "pack_b", "base": "baseline"}
    heroes = M.pick_heroes(scores, packs, "base", hero_packs=["pack_a", "pack_b"])
    assert heroes == {"pack_a": "pa_good", "pack_b": "pb_up"}
    res = M.hero_vs_baseline(pq, "base", {"pack_a": "pa_bad", "pack_b": "pb_up"}, b_ci=500, b_perm=500)
    v = {(r["test"], r["metric"]): r["verdict"] for r in res.iter_rows(named=True)}
    assert v[("pa_bad", "ndcg_10")] == "regression" and v[("pb_up", "ndcg_10")] == "improvement"
    with pytest.raises(ValueError, match="baseline"):
        M.hero_vs_baseline(pq, "nope", heroes)


# --------------------------------------------------------------------------------------------- drift
def _labelled(seed, n=6000, systems=("s1", "s2")):
    rng = np.random.default_rng(seed)
    frames = []
    for s in systems:
        score = rng.normal(0, 1, n)
        p = 1 / (1 + np.exp(-(score * 1.5 - 1)))
        frames.append(
            pl.DataFrame(
                {
                    "system": s,
                    "qid": [f"q{i // 10}" for i in range(n)],
                    "intent": rng.choice(["nl", "identifier"], n),
                    "language": rng.choice(["go", "python"], n),
                    "score": score,
                    "label": (rng.random(n) < p).astype(float),
                }
            )
        )
    return pl.concat(frames)


def test_drift_summary_metrics_and_clamp_rate():
    cur = _labelled(1)
    table, cells, notes = M.drift_summary(cur, noise_reps=50)
    assert table["system"].to_list() == ["s1", "s2", "all"]
    for m in ("ece", "adaptive_ece", "debiased_ece", "brier", "merged_bin_share"):
        assert table[m].is_finite().all() and (table[m] >= 0).all()
    assert table["clamp_rate"].is_null().all() and any("clamp_rate" in n for n in notes)
    assert table.filter(pl.col("system") == "all")["n_labels"][0] == cur.height
    table2, _, _ = M.drift_summary(cur, previous=_labelled(2), noise_reps=50)
    cr = table2["clamp_rate"]
    assert cr.is_not_null().all() and ((cr >= 0) & (cr <= 1)).all()
    assert table2["drift"].to_list() == (cr > 0.10).to_list()


def test_labelled_hits_span_rule():
    hits = pl.DataFrame(
        {
            "run_id": ["r"] * 3,
            "system": ["s"] * 3,
            "qid": ["q"] * 3,
            "rank": [1, 2, 3],
            "repo": ["r"] * 3,
            "path": ["a.py", "a.py", "b.py"],
            "start_line": [10, 100, 10],
            "end_line": [12, 120, 12],
            "score": [3.0, 2.0, 1.0],
        }
    )
    qrels = pl.DataFrame(
        {"qid": ["q"], "repo": ["r"], "path": ["a.py"], "start_line": [5], "end_line": [20], "rel": [2]}
    )
    queries = pl.DataFrame({"qid": ["q"], "intent": ["nl"], "language": ["go"]})
    lab = M.labelled_hits(hits, qrels, queries).sort("score", descending=True)
    assert lab["label"].to_list() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not in the query table"):
        M.labelled_hits(hits, qrels, queries.with_columns(pl.lit("other").alias("qid")))


def test_history_and_trend_plot(tmp_path):
    hist = M.history_frame(
        [
            {"partition": "2026-11-15", "systems": [{"system": "all", "ece": 0.01}]},
            {"partition": "2026-11-08", "systems": [{"system": "all", "ece": 0.02}]},
        ]
    )
    e = hist.filter(pl.col("metric") == "ece")
    assert e["partition"].to_list() == ["2026-11-08", "2026-11-15"] and e["value"].to_list() == [0.02, 0.01]
    png = M.plot_trend(hist, "ece", tmp_path / "t.png", threshold=0.02)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- paging logic
def test_reconcile_pages_once_retries_and_resolves():
    sent, resolved = [], []
    up = {"ok": True}

    def trig(p):
        if up["ok"]:
            sent.append(p.key)
        return up["ok"]

    def res(k):
        if up["ok"]:
            resolved.append(k)
        return up["ok"]

    p = M.Problem("k1", "red")
    open_, log = M.reconcile([], [p], trig, res)
    assert open_ == {"k1"} and sent == ["k1"]
    open_, _ = M.reconcile(open_, [p], trig, res)  # still red: no second page
    assert sent == ["k1"]
    up["ok"] = False  # webhook down while recovering
    open_, log = M.reconcile(open_, [], trig, res)
    assert open_ == {"k1"} and log["failed"] == ["k1"]
    up["ok"] = True
    open_, log = M.reconcile(open_, [], trig, res)
    assert open_ == set() and resolved == ["k1"]
    up["ok"] = False  # trigger while down: retried next tick
    open_, _ = M.reconcile(open_, [M.Problem("k2", "red")], trig, res)
    assert open_ == set()
    up["ok"] = True
    open_, _ = M.reconcile(open_, [M.Problem("k2", "red")], trig, res)
    assert open_ == {"k2"} and sent == ["k1", "k2"]


def test_gate_problems_and_missed_run():
    evals = [
        {
            "asset": "scores",
            "check": "pool",
            "group": "lens",
            "passed": False,
            "severity": "ERROR",
            "partition": "2026-11-15",
            "owners": ["team:a"],
        },
        {"asset": "scores", "check": "tail", "group": "lens", "passed": False, "severity": "WARN"},
        {"asset": "x", "check": "c", "group": "lvm", "passed": False, "severity": "WARN"},
        {"asset": "y", "check": "c", "group": "lvm", "passed": True, "severity": "ERROR"},
    ]
    probs = M.gate_problems(evals)
    assert [p.key for p in probs] == ["lens/gate_monitor/lens"]
    assert "scores.pool[2026-11-15]" in probs[0].summary and probs[0].owners == ("team:a",)
    assert len(probs[0].details["warn"]) == 1
    # Sunday 10:00 with last week's bundle only: this week's run is missed
    p = M.missed_weekly_run(et(2026, 11, 22, 10, 0), "2026-11-15")
    assert p is not None and p.details["expected"] == "2026-11-22"
    assert M.missed_weekly_run(et(2026, 11, 22, 5, 0), "2026-11-15") is None  # still running
    assert M.missed_weekly_run(et(2026, 11, 25, 5, 0), "2026-11-22") is None
    assert M.missed_weekly_run(et(2026, 11, 22, 5, 0), None) is not None


# --------------------------------------------------------------------------------------------- bundle monitors
def _bundle(root, gates_ok=True, age_ms=0, tail=1.5):
    fp = "v22_deadbeef_1"
    b = root / "bundles" / fp
    (b / "tables").mkdir(parents=True)
    scores = _scores({"a": 0.01})
    scores.write_parquet(b / "scores.parquet")
    pl.DataFrame({"system": ["a"] * 3, "qid": list("xyz"), "ndcg_10": [0.1, 0.5, 0.9]}).write_parquet(
        b / "per_query.parquet"
    )
    pl.DataFrame(
        {
            "system": ["a"],
            "ndcg_10": [0.5],
            "sla_recall_50": [0.6],
            "lat_p95": [40.0],
            "lat_p99": [60.0],
            "p99_p95": [tail],
            "file_credit": [0.01],
        }
    ).write_csv(b / "tables" / "hero_span_v22.csv")
    now_ms = int(et(2026, 11, 23, 10).timestamp() * 1000)
    att = {
        "fingerprint": fp,
        "created_ms": now_ms - age_ms,
        "all_blocking_green": gates_ok,
        "gates": [{"name": "pool", "blocking": True, "passed": gates_ok, "subject": "a"}],
        "artifacts": {
            "scores.parquet": sha256_file(b / "scores.parquet"),
            "tables/hero_span_v22.csv": sha256_file(b / "tables" / "hero_span_v22.csv"),
        },
    }
    atomic_write_json(b / "attestation.json", att)
    atomic_write_json(
        root / "published.json", {"fingerprint": fp, "bundle": f"bundles/{fp}", "published_ms": now_ms - age_ms}
    )
    return b


def test_emergency_checks(tmp_path):
    assert M.emergency_checks(tmp_path)[0] == []  # nothing published yet
    b = _bundle(tmp_path)
    probs, sig = M.emergency_checks(tmp_path)
    assert probs == []
    (b / "scores.parquet").write_bytes((b / "scores.parquet").read_bytes() + b"x")
    probs, sig2 = M.emergency_checks(tmp_path)
    assert sig2 != sig and any(p.key.endswith("tampered/scores") for p in probs)
    (tmp_path / "published.json").write_text("{not json")
    probs, _ = M.emergency_checks(tmp_path)
    assert [p.key for p in probs] == ["lens/published/pointer"]


def test_emergency_checks_red_published(tmp_path):
    _bundle(tmp_path, gates_ok=False)
    probs, _ = M.emergency_checks(tmp_path, deep=False)
    assert any("red_published" in p.key and p.severity == "critical" for p in probs)


def test_hero_health(tmp_path):
    now = et(2026, 11, 23, 10)
    probs, _ = M.hero_health(tmp_path, now)
    assert [p.key for p in probs] == ["lens/hero_health/unpublished"]
    _bundle(tmp_path, age_ms=10 * 86_400_000, tail=2.5)
    keys = {p.key for p in M.hero_health(tmp_path, now)[0]}
    assert keys == {"lens/hero_health/stale", "lens/hero_health/a/tail"}


def test_regeneration_compare_detects_a_changed_byte(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"same")
    b = tmp_path / "b.bin"
    b.write_bytes(b"same")
    cmp = M.compare_files({"agg": a}, {"agg": {"path": str(b)}})
    assert cmp["identical"].to_list() == [True]
    b.write_bytes(b"samE")
    assert M.compare_files({"agg": a}, {"agg": {"path": str(b)}})["identical"].to_list() == [False]
    assert M.compare_files({"agg": tmp_path / "nope"}, {"agg": {"path": str(b)}})["identical"].to_list() == [False]
