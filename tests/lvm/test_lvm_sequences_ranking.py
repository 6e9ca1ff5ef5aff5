import numpy as np
import pytest

from lvm_core.ranking import Bank, hits_at, target_ranks
from lvm_core.sequences import SequenceError, assign_splits, gather, leakage, make_sequences


def _ids(sizes):
    ids, lanes = [], []
    for i, n in enumerate(sizes):
        ids += [f"a{i:02d}"] * n
        lanes += [f"l{i % 2}"] * n
    return np.asarray(ids), np.asarray(lanes)


def test_windows_targets_and_stride():
    sizes = [10, 3, 7, 9, 8, 10, 11, 6, 9, 12]
    ids, lanes = _ids(sizes)
    seq = make_sequences(ids, lanes, context_len=3, stride=2, eval_fraction=0.3, val_fraction=0.3)
    w = seq.windows.to_pylist()
    assert all(r["target"] == r["ctx_start"] + 3 for r in w)
    by_art = {}
    for r in w:
        by_art.setdefault(r["article_id"], []).append(r)
    # Every window stays inside its article (target included).
    first = {f"a{i:02d}": int(sum(sizes[:i])) for i in range(len(sizes))}
    size = {f"a{i:02d}": n for i, n in enumerate(sizes)}
    for aid, rows in by_art.items():
        for r in rows:
            assert first[aid] <= r["ctx_start"] and r["target"] < first[aid] + size[aid]
        step = 2 if rows[0]["split"] == "train" else 1
        starts = [r["ctx_start"] for r in rows]
        assert starts == list(range(first[aid], first[aid] + size[aid] - 3, step))
    assert seq.skipped_short == 1  # a01 has 3 sentences < 3 + 1
    ctx = gather(np.arange(20)[:, None].astype(np.float32), np.array([4]), 3)
    assert ctx[0, :, 0].tolist() == [4, 5, 6]


def test_split_by_article_is_deterministic_and_leak_free():
    ids, lanes = _ids([12] * 40)
    a = make_sequences(ids, lanes, 4, 1, 0.3, 0.15)
    b = make_sequences(ids, lanes, 4, 1, 0.3, 0.15)
    assert a.article_sets() == b.article_sets()
    assert leakage(a.article_sets()) == []
    c = a.counts()
    assert c["eval"]["articles"] > 0 and c["val"]["articles"] > 0 and c["train"]["articles"] > 0
    # Every lane contributes eval articles (per-lane stratification).
    ev = [r for r in a.articles.to_pylist() if r["split"] == "eval"]
    assert {r["lane"] for r in ev} == {"l0", "l1"}
    # The eval bank is every sentence of the eval articles.
    assert a.bank_rows("eval").size == 12 * c["eval"]["articles"]


def test_min_eval_candidates_tops_up():
    arts = [(f"a{i}", "x", 10) for i in range(20)]
    s = assign_splits(arts, 0.1, 0.1, min_eval_candidates=100)
    assert sum(10 for a in arts if s[a[0]] == "eval") >= 100


def test_leakage_detects_shared_article():
    assert leakage({"train": ["a", "b"], "val": ["c"], "eval": ["b", "d"]}) == ["b"]
    assert leakage({"train": ["a"], "eval": ["b"]}) == []


def test_too_short_articles():
    ids, lanes = _ids([3, 4, 2])
    with pytest.raises(SequenceError, match="too short"):
        make_sequences(ids, lanes, context_len=5)
    with pytest.raises(SequenceError, match="context_len"):
        make_sequences(ids, lanes, context_len=0)


def test_hit_at_k_hand_computed():
    # Bank of 4 unit vectors in 2-D at angles 0, 30, 60, 90 degrees.
    ang = np.deg2rad([0, 30, 60, 90])
    bank = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    preds = np.array([[1, 0], [np.cos(np.deg2rad(50)), np.sin(np.deg2rad(50))], [0, 1]], np.float32)
    targets = np.array([0, 1, 0])
    # q0 -> target at 0 deg: best, rank 1. q1 (50 deg): 60 (10 away) beats 30 (20 away): rank 2.
    # q2 (90 deg): target 0 deg is the farthest: rank 4.
    r = target_ranks(preds, targets, bank)
    assert r.tolist() == [1, 2, 4]
    h = hits_at(r, [1, 2, 5])
    assert h[1].tolist() == [1, 0, 0] and h[2].tolist() == [1, 1, 0] and h[5].tolist() == [1, 1, 1]


def test_ranks_are_tie_safe_and_nan_is_a_miss():
    bank = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    # Equidistant from candidates 0 and 1: the tie counts against the prediction.
    preds = np.array([[1, 1], [np.nan, 0]], np.float32)
    r = target_ranks(preds, np.array([0, 0]), bank)
    assert r.tolist() == [2, 4]


def test_bank_dedups_identical_sentences():
    v = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)
    b = Bank(v, np.array([0, 1, 2, 3]))
    assert b.n == 3
    assert b.index_of(np.array([0]))[0] == b.index_of(np.array([2]))[0]
    with pytest.raises(ValueError):
        b.index_of(np.array([7]))
