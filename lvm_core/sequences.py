"""Training sequences: context windows -> next vector, split by article (issue 7 item 3).

A window of article `a` is up to `context_len` consecutive sentence vectors; its target is the
vector of the next sentence. Every sentence with at least `min_context` earlier sentences in its
article is a target (default `min_context = context_len`: every window is full); its context is
the `context_len` sentences before it, or all of them when the article has fewer (`ctx_start` =
max(article start, target - context_len)). `gather` left-pads a short context with zero vectors
(a unit-norm sentence vector is never zero, so models tell padding apart). A long context
length (the design's 100 and 500) thus keeps every article whose prefix reaches `min_context`
instead of dropping the (many) articles shorter than the context length. Targets advance every
`stride` sentences for training; validation and eval use stride 1 (every next sentence is a
query).

Split, by article, per lane (so every lane is represented): a lane's articles are ordered by
sha256(article id); walking that order, an article goes to `eval` while the lane's eval
articles hold less than `eval_fraction` of its sentences, then to `val` up to `val_fraction`,
then to `train`. If the eval bank then holds fewer than `min_eval_candidates` sentences, train
articles (in global hash order) move to eval until it does. The result depends only on the
article ids and sizes, never on a random state.

Articles shorter than `min_context + 1` sentences give no window: they are counted as skipped
(their sentences still join the eval bank when the article is in eval). If no split has any
window left, `SequenceError` is raised.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lens_core.common.hashing import atomic_path, atomic_write_json, canonical_json
from lvm_core.corpus import article_hash

SPLITS = ("train", "val", "eval")

WINDOWS_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("article_id", pa.string()),
        ("lane", pa.string()),
        ("ctx_start", pa.int64()),  # corpus row of the first context sentence
        ("target", pa.int64()),  # corpus row of the next sentence (ctx_start + context_len when full)
    ]
)
SPLITS_SCHEMA = pa.schema(
    [
        ("article_id", pa.string()),
        ("lane", pa.string()),
        ("split", pa.string()),
        ("first_row", pa.int64()),
        ("n_sentences", pa.int64()),
        ("n_windows", pa.int64()),
    ]
)


class SequenceError(ValueError):
    """No usable window (all articles too short) or a bad windowing setting."""


@dataclass
class Sequences:
    context_len: int
    windows: pa.Table  # WINDOWS_SCHEMA
    articles: pa.Table  # SPLITS_SCHEMA
    skipped_short: int
    min_context: int | None = None  # None = context_len (every window full)

    @property
    def min_ctx(self) -> int:
        return self.context_len if self.min_context is None else int(self.min_context)

    def split_rows(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ctx_start, target, lane) arrays of one split."""
        mask = np.asarray(self.windows.column("split").to_numpy(zero_copy_only=False)) == split
        start = self.windows.column("ctx_start").to_numpy()[mask]
        target = self.windows.column("target").to_numpy()[mask]
        lane = np.asarray(self.windows.column("lane").to_numpy(zero_copy_only=False))[mask]
        return start, target, lane

    def bank_rows(self, split: str) -> np.ndarray:
        """Corpus rows of every sentence of the split's articles (the candidate bank)."""
        split_col = np.asarray(self.articles.column("split").to_numpy(zero_copy_only=False))
        m = split_col == split
        first = self.articles.column("first_row").to_numpy()[m]
        n = self.articles.column("n_sentences").to_numpy()[m]
        if first.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(f, f + k) for f, k in zip(first, n)]).astype(np.int64)

    def article_sets(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {s: [] for s in SPLITS}
        for aid, sp in zip(self.articles.column("article_id").to_pylist(), self.articles.column("split").to_pylist()):
            out[sp].append(aid)
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        split_col = np.asarray(self.windows.column("split").to_numpy(zero_copy_only=False))
        art_split = self.articles.column("split").to_pylist()
        return {
            s: {
                "windows": int((split_col == s).sum()),
                "articles": sum(1 for x in art_split if x == s),
                "bank": int(self.bank_rows(s).size),
            }
            for s in SPLITS
        }

    def content_hash(self) -> str:
        h = hashlib.sha256(f"L={self.context_len}\n".encode())
        if self.min_ctx != self.context_len:
            h.update(f"min={self.min_ctx}\n".encode())
        for name in ("ctx_start", "target"):
            h.update(np.ascontiguousarray(self.windows.column(name).to_numpy()).tobytes())
        h.update("\n".join(self.windows.column("split").to_pylist()).encode())
        h.update(canonical_json(self.articles.to_pylist()).encode())
        return h.hexdigest()


def leakage(splits: dict[str, list[str] | set[str]]) -> list[str]:
    """Articles that appear in more than one split (must be empty)."""
    seen: dict[str, str] = {}
    leaked: set[str] = set()
    for name, arts in splits.items():
        for a in set(arts):
            if a in seen and seen[a] != name:
                leaked.add(a)
            seen.setdefault(a, name)
    return sorted(leaked)


def assign_splits(
    articles: list[tuple[str, str, int]], eval_fraction: float, val_fraction: float, min_eval_candidates: int = 0
) -> dict[str, str]:
    """article id -> split, from (id, lane, n_sentences) triples (see the module docstring)."""
    if not 0 < eval_fraction < 1 or not 0 <= val_fraction < 1 or eval_fraction + val_fraction >= 1:
        raise SequenceError(f"bad split fractions eval={eval_fraction} val={val_fraction}")
    by_lane: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for aid, lane, n in articles:
        by_lane[lane].append((aid, n))
    out: dict[str, str] = {}
    for lane in sorted(by_lane):
        arts = sorted(by_lane[lane], key=lambda t: article_hash(t[0]))
        total = sum(n for _, n in arts)
        n_eval = n_val = 0
        for aid, n in arts:
            # Take the article when that brings the split closer to its target share.
            if n_eval + n / 2 <= eval_fraction * total:
                out[aid] = "eval"
                n_eval += n
            elif n_val + n / 2 <= val_fraction * total:
                out[aid] = "val"
                n_val += n
            else:
                out[aid] = "train"
    bank = sum(n for aid, _, n in articles if out[aid] == "eval")
    if bank < min_eval_candidates:
        for aid, _, n in sorted(articles, key=lambda t: article_hash(t[0])):
            if bank >= min_eval_candidates:
                break
            if out[aid] == "train":
                out[aid] = "eval"
                bank += n
    return out


def make_sequences(
    article_ids: np.ndarray,
    lanes: np.ndarray,
    context_len: int = 8,
    stride: int = 1,
    eval_fraction: float = 0.3,
    val_fraction: float = 0.12,
    min_eval_candidates: int = 0,
    min_context: int | None = None,
) -> Sequences:
    """Windows over a corpus given per-row article ids and lanes (rows of one article are
    contiguous, in sentence order, as in corpus.parquet)."""
    if context_len < 1:
        raise SequenceError(f"context_len must be >= 1 (got {context_len})")
    min_ctx = context_len if min_context is None else int(min_context)
    if not 1 <= min_ctx <= context_len:
        raise SequenceError(f"min_context must be in [1, context_len={context_len}] (got {min_context})")
    if stride < 1:
        raise SequenceError(f"stride must be >= 1 (got {stride})")
    article_ids = np.asarray(article_ids)
    n = article_ids.size
    if n == 0:
        raise SequenceError("no sentences to window")
    # Article boundaries (contiguous runs).
    change = np.flatnonzero(article_ids[1:] != article_ids[:-1]) + 1
    firsts = np.concatenate([[0], change]).astype(np.int64)
    sizes = np.diff(np.concatenate([firsts, [n]])).astype(np.int64)
    ids = article_ids[firsts].tolist()
    if len(set(ids)) != len(ids):
        raise SequenceError("an article's sentences are not contiguous in the corpus table")
    art_lanes = np.asarray(lanes)[firsts].tolist()
    split_of = assign_splits(
        list(zip(ids, art_lanes, sizes.tolist())), eval_fraction, val_fraction, min_eval_candidates
    )
    cols: dict[str, list] = {k: [] for k in ("split", "article_id", "lane", "ctx_start", "target")}
    n_windows = []
    skipped = 0
    for aid, lane, first, size in zip(ids, art_lanes, firsts.tolist(), sizes.tolist()):
        split = split_of[aid]
        step = stride if split == "train" else 1
        targets = np.arange(first + min_ctx, first + size, step, dtype=np.int64)
        if targets.size == 0:
            skipped += 1
        n_windows.append(int(targets.size))
        cols["split"].extend([split] * targets.size)
        cols["article_id"].extend([aid] * targets.size)
        cols["lane"].extend([lane] * targets.size)
        cols["ctx_start"].append(np.maximum(targets - context_len, first))
        cols["target"].append(targets)
    if sum(n_windows) == 0:
        raise SequenceError(
            f"every article is too short for one window of {min_ctx} "
            f"sentences + 1 target ({skipped} article(s) skipped)"
        )
    windows = pa.table(
        {
            "split": cols["split"],
            "article_id": cols["article_id"],
            "lane": cols["lane"],
            "ctx_start": np.concatenate(cols["ctx_start"]),
            "target": np.concatenate(cols["target"]),
        },
        schema=WINDOWS_SCHEMA,
    )
    articles = pa.table(
        {
            "article_id": ids,
            "lane": art_lanes,
            "split": [split_of[a] for a in ids],
            "first_row": firsts,
            "n_sentences": sizes,
            "n_windows": np.asarray(n_windows, np.int64),
        },
        schema=SPLITS_SCHEMA,
    )
    seq = Sequences(context_len, windows, articles, skipped, None if min_ctx == context_len else min_ctx)
    empty = [s for s, c in seq.counts().items() if c["windows"] == 0]
    if empty:
        raise SequenceError(
            f"split(s) {', '.join(empty)} have no window of {min_ctx}+1 "
            f"sentences ({skipped} article(s) too short); lower context_len or "
            f"widen the corpus"
        )
    return seq


def window_index(ctx_start: np.ndarray, target: np.ndarray, context_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, L) corpus rows of each window's context, right-aligned on the target, and the mask of
    real (not padding) positions; padded positions hold row 0."""
    idx = np.asarray(target, dtype=np.int64)[:, None] - context_len + np.arange(context_len)[None, :]
    valid = idx >= np.asarray(ctx_start, dtype=np.int64)[:, None]
    return np.where(valid, idx, 0), valid


def gather(
    vectors: np.ndarray, ctx_start: np.ndarray, context_len: int, target: np.ndarray | None = None
) -> np.ndarray:
    """(Q, L, D) context windows gathered from the vector matrix (vectorised). Without `target`
    every window is full (rows ctx_start .. ctx_start + L - 1); with it, the window ends just
    before the target and positions before `ctx_start` are zero vectors (left padding)."""
    if target is None:
        idx = ctx_start[:, None] + np.arange(context_len)[None, :]
        return vectors[idx]
    idx, valid = window_index(ctx_start, target, context_len)
    out = vectors[idx]
    if not valid.all():
        out = out * valid[:, :, None].astype(out.dtype)
    return out


def write_sequences(seq: Sequences, out_dir: str | os.PathLike, extra: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    lk = leakage(seq.article_sets())
    if lk:  # cannot happen by construction; refuse to write a leaking split anyway
        raise SequenceError(f"article leakage across splits: {lk[:5]}")
    meta = {
        "context_len": seq.context_len,
        "min_context": seq.min_ctx,
        "counts": seq.counts(),
        "skipped_short_articles": seq.skipped_short,
        "leakage": lk,
        "content_hash": seq.content_hash(),
        **(extra or {}),
    }
    with atomic_path(out_dir / "sequences.parquet", suffix=".parquet") as tmp:
        pq.write_table(seq.windows, tmp)
    with atomic_path(out_dir / "article_splits.parquet", suffix=".parquet") as tmp:
        pq.write_table(seq.articles, tmp)
    atomic_write_json(out_dir / "sequences.json", meta)
    return meta


def read_sequences(out_dir: str | os.PathLike) -> tuple[Sequences, dict]:
    out_dir = Path(out_dir)
    path = out_dir / "sequences.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; materialise lvm_sequences first")
    meta = json.loads((out_dir / "sequences.json").read_text())
    seq = Sequences(
        meta["context_len"],
        pq.read_table(path),
        pq.read_table(out_dir / "article_splits.parquet"),
        meta["skipped_short_articles"],
        meta.get("min_context") if meta.get("min_context") != meta["context_len"] else None,
    )
    return seq, meta
