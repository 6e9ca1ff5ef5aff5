import json

import numpy as np
import pytest

from lens_cli.main import main as cli_main
from lvm_core import registry as R
from lvm_core.checks import check_drift, check_lanes, check_nan, check_p95
from lvm_core.vectors import VectorError, write_vectors


def _ev(tmp_path, name, hit, per_query=None, eval_set="E", ci=0.02):
    ck = tmp_path / f"{name}.pt"
    ck.write_bytes(name.encode())
    from lens_core.common.hashing import sha256_file

    return {
        "name": name,
        "variant": name.split("@")[0],
        "checkpoint": str(ck),
        "sha256": sha256_file(ck),
        "eval_set": eval_set,
        "metrics": {"hit1": hit / 2, "hit5": hit, "hit10": hit * 1.2},
        "hit": hit,
        "ci_low": hit - ci,
        "ci_high": hit + ci,
        "per_query": per_query,
    }


def test_promotion_rules(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random(2000) < 0.30).astype(float)
    better = np.maximum(base, (rng.random(2000) < 0.10))  # strictly more hits, paired
    champ = _ev(tmp_path, "copy_last@aaaa", base.mean(), base)
    cand = _ev(tmp_path, "memory_gru@bbbb", better.mean(), better)
    d0 = R.maybe_promote(cand, None)
    assert d0["promote"] and d0["method"] == "initial"
    d = R.maybe_promote(cand, champ, b=500)
    assert d["promote"] and d["method"] == "paired_bootstrap" and d["diff_ci_low"] > 0
    same = R.maybe_promote(champ, champ)
    assert not same["promote"] and same["method"] == "same"
    noise = base.copy()
    noise[:4] = 1 - noise[:4]  # a tiny, not significant difference
    d2 = R.maybe_promote(_ev(tmp_path, "ridge@cccc", noise.mean(), noise), champ, b=500)
    assert not d2["promote"] and d2["diff_ci_low"] <= 0 <= d2["diff_ci_high"]
    # Different eval sets: unpaired rule (candidate CI low vs champion hit).
    c3 = _ev(tmp_path, "ridge@dddd", 0.40, None, eval_set="F", ci=0.02)
    assert R.maybe_promote(c3, {**champ, "per_query": None})["method"] == "ci_low_vs_hit"
    assert R.maybe_promote(c3, {**champ, "per_query": None})["promote"]


def test_registry_history_and_rollback(tmp_path):
    a = _ev(tmp_path, "copy_last@aaaa", 0.2)
    b = _ev(tmp_path, "memory_gru@bbbb", 0.3)
    R.apply_decision(tmp_path, a, R.maybe_promote(a, None))
    R.apply_decision(tmp_path, b, {"promote": True, "method": "paired_bootstrap", "reason": "x"})
    reg = R.read_registry(tmp_path)
    assert reg["champion"]["name"] == "memory_gru@bbbb"
    assert [h["event"] for h in reg["history"]] == ["promote", "promote"]
    reg = R.rollback("copy_last@aaaa", tmp_path)
    assert reg["champion"]["name"] == "copy_last@aaaa"
    assert reg["history"][-1]["event"] == "rollback"
    assert reg["history"][-1]["previous"] == "memory_gru@bbbb"
    on_disk = json.loads((tmp_path / "champion.json").read_text())
    assert on_disk["champion"]["name"] == "copy_last@aaaa"
    with pytest.raises(R.RegistryError, match="not an earlier champion"):
        R.rollback("nope@0000", tmp_path)
    # A tampered checkpoint cannot be rolled back to, and nothing changes.
    (tmp_path / "memory_gru@bbbb.pt").write_bytes(b"tampered")
    with pytest.raises(R.RegistryError, match="sha256 mismatch"):
        R.rollback("memory_gru@bbbb", tmp_path)
    assert R.read_registry(tmp_path)["champion"]["name"] == "copy_last@aaaa"


def test_cli_status_and_rollback(tmp_path, capsys):
    lvm = tmp_path / "lvm"
    lvm.mkdir()
    a = _ev(lvm, "copy_last@aaaa", 0.2)
    b = _ev(lvm, "ridge@bbbb", 0.3)
    R.apply_decision(lvm, a, R.maybe_promote(a, None))
    R.apply_decision(lvm, b, {"promote": True, "method": "x", "reason": "x"})
    assert cli_main(["lvm", "--data-dir", str(tmp_path), "rollback", "copy_last@aaaa"]) == 0
    assert "copy_last@aaaa" in capsys.readouterr().out
    assert cli_main(["lvm", "--data-dir", str(tmp_path), "status"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"]["name"] == "copy_last@aaaa"
    assert cli_main(["lvm", "--data-dir", str(tmp_path), "rollback", "ghost@1"]) == 1
    assert "ghost@1" in capsys.readouterr().err


def test_checks_thresholds():
    assert check_drift(0.30, None, 0.05).passed
    assert check_drift(0.29, 0.30, 0.05).passed  # 3.3% drop
    r = check_drift(0.28, 0.30, 0.05)  # 6.7% drop
    assert not r.passed and r.value == pytest.approx(0.0667, abs=1e-3) and r.severity == "ERROR"
    lanes = {"a": (0.30, 100), "b": (0.31, 100), "c": (0.20, 100), "tiny": (0.0, 3)}
    lr = check_lanes(lanes, 0.15, 30)
    assert not lr.passed and lr.details["failing"] == ["c"] and "tiny" in lr.details["too_few_queries"]
    assert check_lanes({"a": (0.3, 100), "b": (0.28, 100)}, 0.15, 30).passed
    assert check_p95({"m": 4.9}, 5.0).passed and not check_p95({"m": 1.0, "g": 5.1}, 5.0).passed
    assert check_nan({"m": 0.001}, 0.001).passed and not check_nan({"m": 0.0011}, 0.001).passed


def test_nan_vectors_are_refused_and_nothing_written(tmp_path):
    v = np.ones((4, 3), np.float32)
    v[2, 1] = np.nan
    with pytest.raises(VectorError, match="NaN"):
        write_vectors(v, tmp_path, "h", "m")
    assert not any(tmp_path.iterdir())
