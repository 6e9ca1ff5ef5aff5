"""Hit@K of a predicted next vector among a candidate bank (shared by validation and eval).

The bank is de-duplicated first: identical sentence vectors (the same sentence text occurring
twice) are one candidate, so a repeated sentence never counts against the true target. The
rank of the true target is pessimistic (tie-safe): 1 + the number of OTHER candidates whose
cosine is >= the target's. A prediction with NaN/Inf ranks last (a miss at every K).

Per-query exclusion (`exclude`): the query's own context sentences are removed from its
candidate set (they are known not to be the next sentence; see `lvm_core.evaluate`).
"""

from __future__ import annotations

import numpy as np


class Bank:
    """Unique candidate vectors plus the map corpus row -> candidate index."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            raise ValueError("empty candidate bank")
        uniq, inverse = np.unique(np.ascontiguousarray(vectors[rows], dtype=np.float32), axis=0, return_inverse=True)
        self.vectors = np.ascontiguousarray(uniq)
        self._rows = rows
        self._inv = np.asarray(inverse).reshape(-1).astype(np.int64)
        self._order = np.argsort(rows)

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def n_rows(self) -> int:
        """Corpus rows in the bank (before de-duplication)."""
        return int(self._rows.size)

    def index_of(self, corpus_rows: np.ndarray) -> np.ndarray:
        """Candidate index of each corpus row (all must be in the bank)."""
        corpus_rows = np.asarray(corpus_rows, dtype=np.int64)
        sorted_rows = self._rows[self._order]
        pos = np.searchsorted(sorted_rows, corpus_rows)
        pos = np.clip(pos, 0, sorted_rows.size - 1)
        if not np.array_equal(sorted_rows[pos], corpus_rows):
            raise ValueError("a target row is not in the candidate bank")
        return self._inv[self._order[pos]]


def target_ranks(
    preds: np.ndarray, target_idx: np.ndarray, bank: np.ndarray, chunk: int = 2048, exclude: np.ndarray | None = None
) -> np.ndarray:
    """1-based pessimistic rank of `bank[target_idx[i]]` for `preds[i]` by cosine (bank rows
    and finite predictions are treated as unit vectors: the score is the dot product after
    normalising the prediction). Non-finite predictions get rank n_bank + 1.

    `exclude` (Q, E) int: per query, candidate indices removed from its candidate set (the
    query's own context sentences; -1 = padding). The target itself is never removed (a context
    sentence with the same text as the next sentence is the same de-duplicated candidate)."""
    preds = np.asarray(preds, dtype=np.float32)
    q = preds.shape[0]
    n = bank.shape[0]
    target_idx = np.asarray(target_idx, dtype=np.int64)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.ndim != 2 or exclude.shape[0] != q:
            raise ValueError(f"exclude must be (Q={q}, E); got shape {exclude.shape}")
    ranks = np.empty(q, dtype=np.int64)
    finite = np.isfinite(preds).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], preds, 0), axis=1, keepdims=True)
    unit = np.where(finite[:, None], preds, 0) / np.maximum(norms, 1e-12)
    for s in range(0, q, chunk):
        sl = slice(s, min(q, s + chunk))
        scores = unit[sl] @ bank.T  # (c, n)
        t = target_idx[sl]
        if exclude is not None and exclude.shape[1]:
            ex = exclude[sl]
            ex = np.where(ex == t[:, None], -1, ex)
            r = np.broadcast_to(np.arange(t.size)[:, None], ex.shape)
            ok = ex >= 0
            scores[r[ok], ex[ok]] = -np.inf
        true = scores[np.arange(t.size), t][:, None]
        ranks[sl] = (scores >= true).sum(axis=1)  # includes the target
    ranks[~finite] = n + 1
    return ranks


def candidate_counts(n_bank: int, target_idx: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """Per-query candidate-set size: the bank minus the distinct excluded candidates other
    than the target (see `target_ranks`)."""
    target_idx = np.asarray(target_idx, dtype=np.int64)
    if exclude is None or exclude.size == 0:
        return np.full(target_idx.size, n_bank, dtype=np.int64)
    ex = np.where(exclude == target_idx[:, None], -1, np.asarray(exclude, dtype=np.int64))
    ex = np.sort(ex, axis=1)
    distinct = (ex >= 0) & np.concatenate([np.ones((ex.shape[0], 1), bool), ex[:, 1:] != ex[:, :-1]], axis=1)
    return n_bank - distinct.sum(axis=1)


def hits_at(ranks: np.ndarray, ks) -> dict[int, np.ndarray]:
    """k -> per-query 0/1 hits (float64)."""
    return {int(k): (ranks <= k).astype(np.float64) for k in ks}
