"""SPEC §6 calibration: sklearn/netcal parity, noise floor, backoff, refit clamp, export,
reliability diagrams and bad input."""

from __future__ import annotations

import json
import time

import numpy as np
import polars as pl
import pytest

from lens_core.calibrate import calibration as C
from lens_core.calibrate.reliability import reliability_diagram


def _cell_frame(
    system: str,
    intent: str,
    language: str,
    n_hits: int,
    rng: np.random.Generator,
    hits_per_query: int = 20,
    warp: float = 1.0,
    tag: str = "",
) -> pl.DataFrame:
    """Labelled hits whose true P(relevant | score) is a logistic curve (raised to `warp`)."""
    score = rng.gamma(2.0, 4.0, n_hits)
    p = (1.0 / (1.0 + np.exp(-(score - 10.0) / 2.5))) ** warp
    qids = np.char.add(f"{system}-{intent}-{language}{tag}-", (np.arange(n_hits) // hits_per_query).astype(str))
    return pl.DataFrame(
        {
            "system": system,
            "qid": qids,
            "intent": intent,
            "language": language,
            "score": score,
            "label": (rng.random(n_hits) < p).astype(np.int64),
        }
    )


# ---------------------------------------------------------------------------------------------
# Isotonic fit == sklearn, export parity
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["noisy", "ties", "single_score", "two_points", "all_zero", "all_one"])
def test_isotonic_fit_matches_sklearn(case):
    rng = np.random.default_rng(1)
    n = 3000
    s = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-s))).astype(float)
    if case == "ties":
        s = np.round(s, 1)
    elif case == "single_score":
        s = np.full(n, 3.0)
    elif case == "two_points":
        s, y = np.array([1.0, 2.0]), np.array([1.0, 0.0])
    elif case == "all_zero":
        y = np.zeros(n)
    elif case == "all_one":
        y = np.ones(n)
    cal = C.fit_isotonic(s, y)
    ref = C.sklearn_reference(s, y)
    np.testing.assert_allclose(cal.x, ref.X_thresholds_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cal.y, ref.y_thresholds_, rtol=0, atol=1e-9)
    grid = np.concatenate([s, np.linspace(s.min() - 3, s.max() + 3, 5001)])
    np.testing.assert_allclose(cal.apply(grid), ref.predict(grid), rtol=0, atol=1e-9)


def test_json_export_round_trips_exactly_and_parity_passes():
    rng = np.random.default_rng(2)
    df = _cell_frame("sys", "nl", "python", 5000, rng)
    s, y = df["score"].to_numpy(), df["label"].to_numpy()
    cal = C.fit_isotonic(s, y, system="sys", intent="nl", language="python", level="cell")
    back = C.Calibrator.from_json(cal.to_json())
    assert np.array_equal(back.x, cal.x) and np.array_equal(back.y, cal.y)
    assert back.version == cal.version and back.key == "sys|nl|python"
    res = C.parity(back, C.sklearn_reference(s, y), s, y)
    assert res["passed"] and res["max_abs_diff"] <= 1e-12 and res["ece_diff"] <= 1e-12
    assert res["n_points"] > s.size + 2000
    # a 1e-3 shift of the breakpoints is caught
    bumped = C.Calibrator(x=cal.x, y=np.maximum(0, cal.y - 1e-3))
    assert not C.parity(bumped, C.sklearn_reference(s, y), s, y)["passed"]


def test_json_import_rejects_bad_exports():
    cal = C.Calibrator(x=np.array([0.0, 1.0]), y=np.array([0.1, 0.8]))
    d = json.loads(cal.to_json())
    with pytest.raises(ValueError, match="version"):
        C.Calibrator.from_json({**d, "y": [0.1, 0.9]})
    with pytest.raises(ValueError, match="format"):
        C.Calibrator.from_json({**d, "format": "other"})
    with pytest.raises(ValueError, match="non-decreasing"):
        C.Calibrator(x=np.array([0.0, 1.0]), y=np.array([0.8, 0.1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        C.Calibrator(x=np.array([1.0, 1.0]), y=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN score"):
        cal.apply([0.5, float("nan")])


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def test_ece_matches_netcal():
    ECE = pytest.importorskip("netcal.metrics").ECE
    rng = np.random.default_rng(3)
    for n in (50, 2000):
        conf = rng.beta(0.7, 2.0, n)
        conf[:11] = np.linspace(0, 1, 11)  # values on the bin edges, 0 and 1
        label = (rng.random(n) < conf).astype(int)
        assert C.ece(conf, label) == pytest.approx(ECE(bins=10).measure(conf, label), abs=1e-12)


def test_adaptive_ece_brier_and_merged_bins():
    rng = np.random.default_rng(4)
    conf = rng.random(1000)
    label = (rng.random(1000) < conf).astype(int)
    order = np.argsort(conf)
    manual = sum(abs(label[g].mean() - conf[g].mean()) * g.size / 1000 for g in np.array_split(order, 10))
    assert C.adaptive_ece(conf, label) == pytest.approx(manual, abs=1e-12)
    assert C.brier(conf, label) == pytest.approx(np.mean((conf - label) ** 2))
    s = rng.random(4000)
    assert C.merged_bin_share(s, (rng.random(4000) < s).astype(int)) <= 0.2  # score orders relevance
    assert C.merged_bin_share(s, (rng.random(4000) < 0.3).astype(int)) >= 0.5  # score is noise
    assert C.merged_bin_share(s, (s > 0.5).astype(int)) == 0.0


def test_perfectly_calibrated_cells_stay_under_their_noise_floor():
    rng = np.random.default_rng(5)
    above, raw, deb = 0, [], []
    for k in range(150):
        conf = rng.beta(0.6, 2.4, 1500)
        label = (rng.random(conf.size) < conf).astype(int)
        e = C.ece(conf, label)
        above += e > C.ece_noise_floor(conf, reps=400, seed=k)
        raw.append(e)
        deb.append(C.debiased_ece(conf, label, reps=400, seed=k))
    assert above <= 150 * 0.10, above  # expected 5%
    assert np.mean(deb) < 0.4 * np.mean(raw)  # the bias is mostly removed
    # a miscalibrated cell is clearly above the floor, and its debiased ECE stays large
    conf = rng.beta(0.6, 2.4, 1500)
    label = (rng.random(conf.size) < np.sqrt(conf)).astype(int)
    assert C.ece(conf, label) > 3 * C.ece_noise_floor(conf)
    assert C.debiased_ece(conf, label) > 0.1


def test_labels_needed_matches_the_documented_figure():
    conf = np.random.default_rng(6).beta(0.6, 2.4, 50_000)
    n = C.labels_needed(conf, gate=0.02)
    assert 3000 <= n <= 3800, n  # module docstring: about 3,400 held-out labels
    assert C.ece_noise_floor(conf, n=n, reps=2000, seed=1) <= 0.0205
    assert C.ece_noise_floor(conf, n=int(n * 0.7), reps=2000, seed=1) > 0.02
    assert "3,400" in C.__doc__


def test_metric_inputs_are_validated():
    with pytest.raises(ValueError, match="no labelled hits"):
        C.ece([], [])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        C.ece([0.2, 0.4], [0, 2])
    with pytest.raises(ValueError, match="non-finite"):
        C.brier([0.2, float("nan")], [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.adaptive_ece([1.2], [1])


# ---------------------------------------------------------------------------------------------
# Split, backoff, report
# ---------------------------------------------------------------------------------------------
def test_qid_split_is_stable_and_balanced():
    qids = [f"q{i}" for i in range(20_000)]
    a = C.qid_split(qids)
    assert a.dtype == bool and 0.48 <= a.mean() <= 0.52
    assert np.array_equal(a, C.qid_split(list(reversed(qids)))[::-1])  # per-qid, order-free
    assert np.array_equal(C.qid_split(["q1", "q1", "q2"])[:2], [a[1], a[1]])
    assert (C.qid_split(qids, salt="other") != a).mean() > 0.4


def _world(rng) -> pl.DataFrame:
    return pl.concat(
        [
            _cell_frame("s1", "nl", "python", 24_000, rng),  # big: own cell
            _cell_frame("s1", "nl", "go", 120, rng),  # small: backs off to s1/nl
            _cell_frame("s1", "identifier", "rust", 60, rng),  # small intent: to s1
            _cell_frame("s2", "nl", "python", 40_000, rng, warp=1.0),
            _cell_frame("s3", "nl", "python", 300, rng).with_columns(label=pl.lit(0, pl.Int64)),
        ]
    )


def test_fit_cells_backs_off_and_report_statuses():
    rng = np.random.default_rng(7)
    df = _world(rng)
    cals, rep = C.calibrate(df, min_labels=200, gate=0.02, noise_reps=500)
    level = {(r["system"], r["intent"], r["language"]): r for r in rep.iter_rows(named=True)}
    assert level[("s1", "nl", "python")]["level"] == "cell"
    assert level[("s1", "nl", "go")]["level"] == "intent"
    assert level[("s1", "nl", "go")]["calibrator"] == "s1|nl|*"
    assert level[("s1", "identifier", "rust")]["level"] == "system"
    # plenty of labels and a real isotonic calibration: passes the gate
    big = level[("s2", "nl", "python")]
    assert big["status"] == "pass" and big["noise_floor"] <= 0.02 and big["ece"] <= 0.02
    # tiny cells: the noise floor is above the gate -> insufficient, with a reason
    small = level[("s1", "nl", "go")]
    assert small["status"] == "insufficient" and "noise floor" in small["reason"]
    assert small["labels_needed"] > small["n_eval"]
    # all-negative system: constant calibrator, said so, no NaN anywhere
    s3 = level[("s3", "nl", "python")]
    assert "all labels are 0" in s3["reason"] and "held-out labels are all 0" in s3["reason"]
    assert cals.for_cell("s3", "nl", "python").y.max() == 0.0
    assert rep.select(pl.selectors.float().is_nan().any()).to_numpy().sum() == 0
    assert set(rep["status"]) <= {"pass", "fail", "insufficient"}
    assert (rep["n_fit"] + rep["n_eval"]).to_list() == (
        df.group_by(["system", "intent", "language"]).len().sort(["system", "intent", "language"])["len"].to_list()
    )
    # a cell never seen at fit time backs off to its system
    assert cals.for_cell("s1", "structural", "java").key == "s1|*|*"
    with pytest.raises(KeyError, match="no calibrator for system 'zz'"):
        cals.for_cell("zz", "nl", "python")
    # the parity suite holds for every calibrator of the set
    par = C.parity_cells(cals, df)
    assert par.height == len(cals.calibrators) and par["passed"].all()


def test_miscalibrated_cell_fails_the_gate():
    rng = np.random.default_rng(8)
    df = _cell_frame("s", "nl", "python", 30_000, rng)
    cals = C.fit_cells(df.filter(pl.Series(C.qid_split(df["qid"]))))
    drifted = _cell_frame("s", "nl", "python", 30_000, rng, warp=0.5, tag="x")  # more relevant now
    rep = C.cell_report(drifted, cals, fit_mask=np.zeros(drifted.height, bool), noise_reps=300)
    row = rep.row(0, named=True)
    assert row["status"] == "fail" and row["ece"] > 0.05 and "ECE" in row["reason"]


def test_bad_labelled_input_is_named():
    rng = np.random.default_rng(9)
    df = _cell_frame("sysA", "nl", "go", 400, rng)
    nan_df = df.with_columns(score=pl.when(pl.int_range(pl.len()) < 3).then(float("nan")).otherwise(pl.col("score")))
    with pytest.raises(ValueError, match=r"3 non-finite score\(s\).*system 'sysA' cell \(nl, go\)"):
        C.fit_cells(nan_df)
    cals, rep = C.calibrate(nan_df, nan_policy="omit", noise_reps=100)
    assert rep["n_dropped"].to_list() == [3]
    assert rep["n_fit"][0] + rep["n_eval"][0] == 397
    with pytest.raises(ValueError, match="'label' must be 0 or 1"):
        C.fit_cells(df.with_columns(label=pl.lit(2)))
    with pytest.raises(ValueError, match="missing column.*language"):
        C.fit_cells(df.drop("language"))
    with pytest.raises(ValueError, match="'intent' has 1 null"):
        C.fit_cells(df.with_columns(intent=pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("intent"))))
    with pytest.raises(ValueError, match="no labelled hits"):
        C.fit_cells(df.head(0))


# ---------------------------------------------------------------------------------------------
# Weekly refit with slope clamp
# ---------------------------------------------------------------------------------------------
def test_refit_on_unchanged_data_clamps_nothing_and_composes_exactly():
    rng = np.random.default_rng(10)
    df = _cell_frame("s", "nl", "python", 20_000, rng)
    s, y = df["score"].to_numpy(), df["label"].to_numpy()
    prev = C.fit_isotonic(s, y, system="s", intent="nl", language="python", level="cell")
    same = C.refit_with_clamp(prev, s, y)
    assert same.clamp_rate == 0.0 and not same.drift and same.reason is None
    np.testing.assert_allclose(same.calibrator.apply(s), prev.apply(s), atol=1e-9)
    # new data from the same process: slopes near 1, few clamps
    df2 = _cell_frame("s", "nl", "python", 20_000, rng, tag="w2")
    res = C.refit_with_clamp(prev, df2["score"].to_numpy(), df2["label"].to_numpy())
    assert res.clamp_rate is not None and res.clamp_rate <= 0.5
    grid = np.linspace(-5, 60, 20001)
    # exported breakpoints are exactly score -> g(prev(score))
    np.testing.assert_allclose(
        res.calibrator.apply(grid), np.interp(prev.apply(grid), res.map_conf, res.map_new), atol=1e-12
    )
    inner = np.diff(res.map_new[1:-1]) / np.diff(res.map_conf[1:-1])
    assert ((inner >= 0.9 - 1e-9) & (inner <= 1.1 + 1e-9)).all()
    back = C.Calibrator.from_json(res.calibrator.to_json())
    assert np.array_equal(back.apply(grid), res.calibrator.apply(grid))


def test_refit_flags_drift_when_the_mapping_bends():
    rng = np.random.default_rng(11)
    df = _cell_frame("s", "nl", "python", 20_000, rng)
    prev = C.fit_isotonic(df["score"].to_numpy(), df["label"].to_numpy(), system="s")
    moved = _cell_frame("s", "nl", "python", 20_000, rng, warp=0.4, tag="w2")
    res = C.refit_with_clamp(prev, moved["score"].to_numpy(), moved["label"].to_numpy())
    assert res.drift and res.clamp_rate > 0.10 and "calibration drift" in res.reason
    assert res.clamped.sum() == round(res.clamp_rate * res.slopes.size)
    # the clamped map moves confidence less than the unclamped refit would
    s = moved["score"].to_numpy()
    assert (
        np.abs(res.calibrator.apply(s) - prev.apply(s)).mean() < np.abs(res.unclamped.apply(s) - prev.apply(s)).mean()
    )
    few = C.refit_with_clamp(prev, s[:50], moved["label"].to_numpy()[:50])
    assert few.calibrator is prev and few.clamp_rate is None and "min_labels" in few.reason


def test_refit_cells_reports_each_calibrator():
    rng = np.random.default_rng(12)
    df = pl.concat([_cell_frame("s", "nl", "python", 6000, rng), _cell_frame("s", "nl", "go", 80, rng)])
    cals = C.fit_cells(df)
    new_df = pl.concat(
        [_cell_frame("s", "nl", "python", 6000, rng, tag="b"), _cell_frame("s", "nl", "go", 80, rng, tag="b")]
    )
    new, rep = C.refit_cells(cals, new_df)
    assert set(rep["calibrator"]) == set(cals.calibrators) == set(new.calibrators)
    assert new.cells == cals.cells
    assert rep.filter(pl.col("calibrator") == "s|nl|python")["n_new"].item() == 6000


# ---------------------------------------------------------------------------------------------
# Export files, serving latency, reliability diagrams
# ---------------------------------------------------------------------------------------------
def test_calibrator_set_writes_exports_and_reloads(tmp_path):
    rng = np.random.default_rng(13)
    df = pl.concat([_cell_frame("s/1", "nl", "python", 3000, rng), _cell_frame("s/1", "nl", "go", 50, rng)])
    cals = C.fit_cells(df)
    paths = C.CalibratorSet.write(cals, tmp_path / "calibration")
    assert paths[-1].name == "index.json" and len(paths) == len(cals.calibrators) + 1
    assert all(p.parent == tmp_path / "calibration" for p in paths)  # "/" in a name is made safe
    assert not list((tmp_path / "calibration").glob(".*"))  # no temp files left
    back = C.CalibratorSet.from_json(paths[-1].read_text())
    s = df["score"].to_numpy()
    assert np.array_equal(back.apply("s/1", "nl", "go", s), cals.apply("s/1", "nl", "go", s))
    one = C.Calibrator.from_json(paths[0].read_text())
    assert one.key in cals.calibrators
    conf = cals.apply_frame(df)
    assert conf.shape == (df.height,) and np.all((conf >= 0) & (conf <= 1))


def test_apply_one_query_p99_under_1ms():
    rng = np.random.default_rng(14)
    cals = C.fit_cells(_cell_frame("s", "nl", "python", 20_000, rng))
    scores = rng.gamma(2.0, 4.0, (2000, 50))
    times = np.empty(2000)
    for q in range(2000):
        t0 = time.perf_counter()
        cals.apply("s", "nl", "python", scores[q])
        times[q] = time.perf_counter() - t0
    assert np.percentile(times, 99) < 1e-3


def test_reliability_diagram_png(tmp_path):
    rng = np.random.default_rng(15)
    conf = rng.beta(0.6, 2.4, 5000)
    label = (rng.random(5000) < conf).astype(int)
    reliability_diagram(conf, label, "warm-up", tmp_path / "w.png")
    t0 = time.process_time()
    out = reliability_diagram(conf, label, "s1 nl/python", tmp_path / "cal" / "r.png")
    cpu = time.process_time() - t0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cpu < 0.6  # ~0.17 s CPU measured; generous for a shared machine
    assert sorted(p.name for p in (tmp_path / "cal").iterdir()) == ["r.png"]
    empty = reliability_diagram([], [], "empty", tmp_path / "e.png")
    assert empty.stat().st_size > 0
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        reliability_diagram([0.5], [3], "bad", tmp_path / "b.png")
