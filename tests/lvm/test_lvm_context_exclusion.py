"""The evaluation protocol: each query's own context sentences are not candidates."""

import numpy as np

from lvm_core import models as M
from lvm_core.ranking import candidate_counts, target_ranks
from lvm_core.sequences import make_sequences
from lvm_core.train import Predictor, SplitData


def _unit(*rows):
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# Bank of 5 unit vectors in 3-d. Query prediction p = e0.
BANK = _unit(
    [1, 0, 0],  # 0: the query's last context sentence (cos 1 with p)
    [0.9, 0.1, 0],  # 1: another context sentence (cos ~0.994)
    [0.8, 0.6, 0],  # 2: the true next sentence (cos 0.8)
    [0.7, 0, 0.71],  # 3: a non-context distractor (cos ~0.702)
    [0, 1, 0],
)  # 4: far (cos 0)
PRED = _unit([1, 0, 0])


def test_hand_computed_rank_changes_when_context_is_excluded():
    t = np.array([2])
    # Without exclusion: candidates 0 and 1 beat the target -> rank 3 (Hit@1 0, Hit@5 1).
    assert target_ranks(PRED, t, BANK).tolist() == [3]
    # Excluding the context (0, 1): only the target and 3, 4 remain; target scores best -> 1.
    assert target_ranks(PRED, t, BANK, exclude=np.array([[0, 1]])).tolist() == [1]
    # Padding (-1) is ignored; excluding only 0 leaves 1 ahead of the target -> rank 2.
    assert target_ranks(PRED, t, BANK, exclude=np.array([[0, -1]])).tolist() == [2]
    assert candidate_counts(5, t, np.array([[0, 1]])).tolist() == [3]
    assert candidate_counts(5, t, np.array([[0, 0]])).tolist() == [4]  # duplicates count once


def test_target_is_never_excluded_even_if_it_is_in_the_context():
    # A context sentence with the same text as the target maps to the same candidate.
    t = np.array([2, 2])
    ex = np.array([[2, 0], [0, 1]])
    assert target_ranks(np.vstack([PRED, PRED]), t, BANK, exclude=ex).tolist() == [2, 1]
    assert candidate_counts(5, t, ex).tolist() == [4, 3]


def test_copy_last_is_not_rewarded_for_echoing_its_input():
    # Articles whose sentences are random unit vectors: the next sentence is unrelated to the
    # context, so an honest Hit@1 for copy-last is near chance; with the context left in, its
    # own input would always rank first and its Hit@1 would be exactly 0.
    rng = np.random.default_rng(0)
    n_art, size, L = 30, 12, 3
    vecs = rng.normal(size=(n_art * size, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.repeat([f"a{i:02d}" for i in range(n_art)], size)
    seq = make_sequences(ids, np.repeat("l", ids.size), context_len=L, eval_fraction=0.3, val_fraction=0.2)
    data = SplitData(seq, vecs, "eval")
    preds = Predictor("copy_last", M.copy_last).predict(data.contexts())
    legacy = target_ranks(preds, data.target_idx, data.bank.vectors)
    fair = data.ranks(preds)
    assert (legacy >= 2).all() and (fair <= legacy).all()
    # The last context vector is excluded for every query -> candidates = bank - L.
    assert (data.candidate_counts() == data.bank.n - L).all()
    assert (data.exclude == data.bank.index_of((data.start[:, None] + np.arange(L)).reshape(-1)).reshape(-1, L)).all()
