"""Concept vectors: one MiniLM vector per corpus sentence (SPEC §12, issue 7 item 2).

Sentences are embedded with `lens_core.common.embeddings.embed_texts` (the engine's offline MiniLM,
L2-normalised 384-d float32, SQLite cache keyed by text hash). Texts go to the model sorted by
length (less padding, ~2x faster on CPU) and come back in corpus order.

Files (under `$LENS_DATA_DIR/lvm/`): `corpus.parquet` (one row per sentence: row, article_id,
lane, sent_idx, text), `concept_vectors.npy` (rows aligned with corpus.parquet) and
`concept_vectors.json` (sha256, shape, model id, corpus hash). Non-finite vectors raise
`VectorError` and nothing is written.

Cache, two levels: a corpus whose content hash (and model) matches the stored vectors' is not
re-read at all (`build_vectors` returns the stored metadata with `reused: true`, after checking
the file's sha256): the full corpus (185k sentences) is embedded once; and each sentence is
cached by text hash (`lens_core.common.embeddings`), so a changed corpus embeds only its new
sentences. Progress: `eta_progress` logs done/total, rate and ETA. The device is `LVM_DEVICE` /
cuda when present (`lvm_core.settings.pick_device`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lens_core.common.embeddings import MODEL_ID, embed_texts
from lens_core.common.hashing import atomic_path, atomic_write_bytes, atomic_write_json, sha256_hex
from lvm_core.corpus import Corpus
from lvm_core.settings import pick_device

log = logging.getLogger(__name__)

CORPUS_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("article_id", pa.string()),
        ("lane", pa.string()),
        ("sent_idx", pa.int32()),
        ("text", pa.string()),
    ]
)


class VectorError(ValueError):
    """Concept vectors that cannot be used (NaN/Inf, wrong shape, misaligned)."""


def corpus_table(corpus: Corpus) -> pa.Table:
    ids, lanes, idx, texts = [], [], [], []
    for a in corpus.articles:
        n = len(a.sentences)
        ids.extend([a.id] * n)
        lanes.extend([a.lane] * n)
        idx.extend(range(n))
        texts.extend(a.sentences)
    return pa.table(
        {
            "row": np.arange(len(texts), dtype=np.int64),
            "article_id": ids,
            "lane": lanes,
            "sent_idx": np.asarray(idx, dtype=np.int32),
            "text": texts,
        },
        schema=CORPUS_SCHEMA,
    )


def write_corpus(corpus: Corpus, out_dir: str | os.PathLike) -> dict:
    out_dir = Path(out_dir)
    table = corpus_table(corpus)
    with atomic_path(out_dir / "corpus.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    meta = {
        "source": corpus.source,
        "n_articles": len(corpus.articles),
        "n_sentences": table.num_rows,
        "lanes": corpus.lanes,
        "skipped": corpus.skipped,
        "capped": corpus.capped,
        "content_hash": corpus.content_hash(),
    }
    atomic_write_json(out_dir / "corpus.json", meta)
    return meta


def read_corpus(out_dir: str | os.PathLike) -> tuple[pa.Table, dict]:
    out_dir = Path(out_dir)
    path = out_dir / "corpus.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; materialise lvm_corpus first")
    return pq.read_table(path), json.loads((out_dir / "corpus.json").read_text())


def validate_vectors(vecs: np.ndarray, n_rows: int | None = None, source: str = "vectors") -> None:
    """Raise VectorError unless `vecs` is a finite 2-D float array (with `n_rows` rows)."""
    if vecs.ndim != 2:
        raise VectorError(f"{source}: expected a 2-D array, got shape {vecs.shape}")
    if n_rows is not None and vecs.shape[0] != n_rows:
        raise VectorError(f"{source}: {vecs.shape[0]} vectors for {n_rows} sentences")
    bad = ~np.isfinite(vecs).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise VectorError(
            f"{source}: {rows.size} vector(s) contain NaN/Inf (first rows: {rows[:5].tolist()}); nothing written"
        )


def eta_text(done: int, total: int, elapsed_s: float) -> str:
    """`done/total (pct, rate/s, ETA ..)` for a progress line."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if done >= total:
        eta = "done"
    elif rate > 0:
        left = (total - done) / rate
        eta = f"ETA {int(left // 3600)}h{int(left % 3600 // 60):02d}m" if left >= 3600 else f"ETA {left / 60:.1f} min"
    else:
        eta = "ETA ?"
    return f"{done}/{total} ({100 * done / max(total, 1):.1f}%, {rate:.1f}/s, {eta})"


def eta_progress(
    what: str, emit: Callable[[str], None] | None = None, every_s: float = 10.0
) -> Callable[[int, int], None]:
    """A (done, total) callback that emits `what: done/total (pct, rate, ETA)` at most every
    `every_s` seconds and at the end (default: the module's logger)."""
    emit = emit or log.info
    state = {"t0": None, "last": float("-inf")}

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if state["t0"] is None:
            state["t0"] = now
        if done >= total or now - state["last"] >= every_s:
            state["last"] = now
            emit(f"{what}: {eta_text(done, total, now - state['t0'])}")

    return report


def embed_sentences(
    texts: list[str],
    cache_dir: str | os.PathLike | None,
    progress: bool | Callable[[int, int], None] = True,
    embed_fn: Callable[..., np.ndarray] | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Embed `texts` (order kept); the model sees them sorted by length. `progress` True logs
    progress lines with ETA (`eta_progress`); a callable gets (done, total)."""
    if embed_fn is None:
        embed_fn = embed_texts
    if progress is True:
        progress = eta_progress("embedded sentences")
    order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    vecs = embed_fn(
        [texts[i] for i in order], cache_dir=cache_dir, progress=progress, batch_size=128, device=device or None
    )
    out = np.empty_like(vecs)
    out[order] = vecs
    return np.ascontiguousarray(out, dtype=np.float32)


def write_vectors(vecs: np.ndarray, out_dir: str | os.PathLike, corpus_hash: str, model_id: str) -> dict:
    """Validate then write `concept_vectors.npy` + `.json` atomically; returns the metadata."""
    validate_vectors(vecs, source="concept vectors")
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vecs, dtype=np.float32), allow_pickle=False)
    data = buf.getvalue()
    meta = {
        "sha256": sha256_hex(data),
        "n": int(vecs.shape[0]),
        "dim": int(vecs.shape[1]),
        "model_id": model_id,
        "corpus_hash": corpus_hash,
        "norm_min": float(np.linalg.norm(vecs, axis=1).min()) if len(vecs) else 0.0,
    }
    atomic_write_bytes(out_dir / "concept_vectors.npy", data)
    atomic_write_json(out_dir / "concept_vectors.json", meta)
    return meta


def read_vectors(out_dir: str | os.PathLike) -> tuple[np.ndarray, dict]:
    out_dir = Path(out_dir)
    path = out_dir / "concept_vectors.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; materialise lvm_concept_vectors first")
    vecs = np.load(path, allow_pickle=False)
    meta = json.loads((out_dir / "concept_vectors.json").read_text())
    validate_vectors(vecs, meta.get("n"), source=str(path))
    return vecs, meta


def build_vectors(
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None,
    progress: bool = True,
    embed_fn: Callable[..., np.ndarray] | None = None,
) -> dict:
    """corpus.parquet -> concept_vectors.npy (the asset's whole job); skipped when the stored
    vectors were built from the same corpus content hash with the same model (`reused`)."""
    out_dir = Path(out_dir)
    table, meta = read_corpus(out_dir)
    stored = stored_vectors_meta(out_dir, meta["content_hash"], table.num_rows)
    if stored is not None:
        log.info("concept vectors: reusing %s (same corpus content hash)", out_dir / "concept_vectors.npy")
        return stored | {"reused": True}
    texts = table.column("text").to_pylist()
    device = pick_device() if embed_fn is None else None
    t0 = time.monotonic()
    vecs = embed_sentences(texts, cache_dir, progress=progress, embed_fn=embed_fn, device=device)
    validate_vectors(vecs, len(texts), source="concept vectors")
    out = write_vectors(vecs, out_dir, meta["content_hash"], MODEL_ID)
    return out | {"reused": False, "embed_seconds": time.monotonic() - t0, "device": device or "cpu"}


def stored_vectors_meta(out_dir: Path, corpus_hash: str, n_rows: int) -> dict | None:
    """The stored vectors' metadata when they match this corpus and model (sha256 checked)."""
    side, npy = out_dir / "concept_vectors.json", out_dir / "concept_vectors.npy"
    if not (side.is_file() and npy.is_file()):
        return None
    try:
        m = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    if m.get("corpus_hash") != corpus_hash or m.get("model_id") != MODEL_ID or m.get("n") != n_rows:
        return None
    if sha256_hex(npy.read_bytes()) != m.get("sha256"):
        log.warning("concept vectors: %s does not match its sha256; re-embedding", npy)
        return None
    return m
