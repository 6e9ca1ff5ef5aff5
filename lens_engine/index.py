"""The engine's indexes: lexical BM25, structural symbols, dense MiniLM + HNSW, in N shards.

- Lexical: BM25 (k1 1.2, b 0.75) over the analysed bag of each unit's indexed text (identifier
  splitting, stopwords; `lens_engine.text`), global IDF so shard scores are comparable. Each
  shard keeps its weight matrix column-major (one column per term) and the per-term maximum
  weight, which gives a per-shard score upper bound for threshold early stop.
  Phrase/proximity features come from positional postings of the sub-token stream (see
  `Positions`).
- Structural: one sparse "symbol document" per unit with field-prefixed terms: `n=` exact
  name, `n:` name parts, `c=`/`c:` enclosing class, `p=` parameters, `k=` called names,
  `d=` decorators, `m:` module path parts; weight = field weight x IDF (binary presence).
- Dense: MiniLM vectors of `<qualname>\\n<indexed text>` (first 2000 characters) through
  `lens_core.common.embeddings.embed_texts` (SQLite cache by text hash). An HNSW graph per shard is
  built over a PCA projection (`PCA_DIM` dims) of the vectors; a search takes `refine_topk`
  candidates with `ef_search` and re-ranks them exactly with the full 384-d vectors.

Shard of a unit = sha256(path) mod N, so a file's functions live on one shard.
Everything is cached under `<cache_dir>/lens_engine/` by content hash (corpus digest +
parameters + INDEX_VERSION); a rebuild from the same corpus is bit-identical (HNSW is built
single-threaded with a fixed seed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from lens_core.common.embeddings import MODEL_ID, embed_texts
from lens_core.common.hashing import atomic_path, canonical_json, sha256_hex
from lens_engine.corpus import Corpus, Unit
from lens_engine.text import analyze, split_identifier

log = logging.getLogger(__name__)

INDEX_VERSION = "1"
DEFAULT_SHARDS = 8
BM25_K1 = 1.2
BM25_B = 0.75
PCA_DIM = 96
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
HNSW_SEED = 100
DENSE_TEXT_CHARS = 2000
STRUCT_FIELD_WEIGHTS = {"n=": 4.0, "n:": 1.5, "c=": 2.0, "c:": 1.0, "p=": 1.0, "k=": 1.0, "d=": 1.0, "m:": 0.5}


def shard_of_path(path: str, n_shards: int) -> int:
    return int(sha256_hex(path.encode())[:8], 16) % n_shards


def dense_text(u: Unit) -> str:
    return f"{u.qualname}\n{u.text}"[:DENSE_TEXT_CHARS]


def struct_terms(u: Unit) -> list[str]:
    terms = {"n=" + u.name.lower()}
    terms.update("n:" + p for p in split_identifier(u.name))
    if u.cls:
        cls = u.cls.rsplit(".", 1)[-1]
        terms.add("c=" + cls.lower())
        terms.update("c:" + p for p in split_identifier(cls))
    terms.update("p=" + p.lstrip("*").lower() for p in u.params if p not in ("self", "cls"))
    terms.update("k=" + c.lower() for c in u.calls)
    terms.update("d=" + d.lower() for d in u.decorators)
    terms.update("m:" + p for part in u.module.split(".") for p in split_identifier(part))
    return sorted(terms)


# ---------------------------------------------------------------------------------------------
# Sparse arms
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SparseArm:
    """A docs x terms weight matrix split into shards (column-major per shard)."""

    vocab: dict[str, int]
    weights: sp.csr_matrix  # global, docs x terms
    shard_docs: list[np.ndarray]  # global doc ids per shard (sorted)
    shard_mats: list[sp.csc_matrix] = dataclasses.field(default_factory=list)
    shard_max: np.ndarray | None = None  # n_shards x V

    def __post_init__(self) -> None:
        w = self.weights.tocsr()
        self.shard_mats = [w[d].tocsc() for d in self.shard_docs]
        v = w.shape[1]
        self.shard_max = np.zeros((len(self.shard_docs), v), dtype=np.float32)
        for s, m in enumerate(self.shard_mats):
            if m.nnz:
                self.shard_max[s] = m.max(axis=0).toarray().ravel()

    def query_vector(self, terms: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        items = sorted((self.vocab[t], w) for t, w in terms.items() if t in self.vocab)
        ids = np.array([i for i, _ in items], dtype=np.int64)
        qw = np.array([w for _, w in items], dtype=np.float32)
        return ids, qw

    def score_shard(self, shard: int, ids: np.ndarray, qw: np.ndarray) -> np.ndarray:
        """Per-doc score sum_t qw[t] * w[doc, t] over the shard's docs.

        Gathers the query terms' columns straight from the CSC arrays (one bincount), about 5x
        faster than scipy's column slicing + matvec for a handful of terms."""
        m = self.shard_mats[shard]
        if ids.size == 0:
            return np.zeros(m.shape[0], dtype=np.float32)
        starts = m.indptr[ids]
        lens = m.indptr[ids + 1] - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(m.shape[0], dtype=np.float32)
        at = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        w = m.data[at].astype(np.float64) * np.repeat(qw.astype(np.float64), lens)
        return np.bincount(m.indices[at], weights=w, minlength=m.shape[0]).astype(np.float32)

    def upper_bound(self, shard: int, ids: np.ndarray, qw: np.ndarray) -> float:
        if ids.size == 0:
            return 0.0
        return float(self.shard_max[shard, ids] @ qw)


def _bm25_matrix(bags: Sequence[list[str]]) -> tuple[dict[str, int], sp.csr_matrix, np.ndarray]:
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for d, bag in enumerate(bags):
        for t in bag:
            cols.append(vocab.setdefault(t, len(vocab)))
            rows.append(d)
    n, v = len(bags), len(vocab)
    tf = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))),
        shape=(n, v),
    )
    tf.sum_duplicates()
    df = np.bincount(tf.indices, minlength=v).astype(np.float64)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    dl = np.asarray(tf.sum(axis=1)).ravel()
    avgdl = dl.mean() if n else 1.0
    norm = BM25_K1 * (1 - BM25_B + BM25_B * dl / max(avgdl, 1e-9))
    row_of = np.repeat(np.arange(n), np.diff(tf.indptr))
    t = tf.data.astype(np.float64)
    data = idf[tf.indices] * t * (BM25_K1 + 1) / (t + norm[row_of])
    w = sp.csr_matrix((data.astype(np.float32), tf.indices.copy(), tf.indptr.copy()), shape=(n, v))
    return vocab, w, idf.astype(np.float32)


def _struct_matrix(units: Sequence[Unit]) -> tuple[dict[str, int], sp.csr_matrix, np.ndarray]:
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for d, u in enumerate(units):
        for t in struct_terms(u):
            cols.append(vocab.setdefault(t, len(vocab)))
            rows.append(d)
    n, v = len(units), len(vocab)
    rows_a, cols_a = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    df = np.bincount(cols_a, minlength=v).astype(np.float64)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    inv = {i: t for t, i in vocab.items()}
    fw = np.array([STRUCT_FIELD_WEIGHTS[inv[i][:2]] for i in range(v)], dtype=np.float64)
    data = (fw * idf)[cols_a]
    w = sp.csr_matrix((data.astype(np.float32), (rows_a, cols_a)), shape=(n, v))
    w.sum_duplicates()
    return vocab, w, idf.astype(np.float32)


@dataclasses.dataclass
class Positions:
    """Positional postings of the sub-token stream: term -> its global stream positions."""

    indptr: np.ndarray  # (V + 1,) int64
    pos: np.ndarray  # global positions in `streams`, grouped by term, ascending within a term
    doc: np.ndarray  # doc id of each entry of `pos`
    offsets: np.ndarray  # (n_docs + 1,) stream offsets

    @classmethod
    def build(cls, streams: np.ndarray, offsets: np.ndarray, n_terms: int) -> "Positions":
        order = np.argsort(streams, kind="stable").astype(np.int64)
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(np.bincount(streams, minlength=n_terms), out=indptr[1:])
        doc = (np.searchsorted(offsets, order, side="right") - 1).astype(np.int64)
        return cls(indptr=indptr, pos=order, doc=doc, offsets=offsets)

    def proximity(self, docs: np.ndarray, qseq: Sequence[int], window: int) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate doc: (phrase fraction, window coverage), both in [0, 1], from the query
        terms' postings only (cost ~ their occurrences, not the candidates' lengths).

        phrase fraction: share of the query's distinct adjacent term pairs that occur adjacently,
        in order, in the doc's sub-token stream. window coverage: (most distinct query terms
        inside any window of `window` stream tokens − 1) / (distinct query terms − 1)."""
        n = len(docs)
        phrase = np.zeros(n, dtype=np.float32)
        cover = np.zeros(n, dtype=np.float32)
        qset = np.unique(np.asarray(qseq, dtype=np.int64))
        if n == 0 or qset.size < 2:
            return phrase, cover
        slot = np.full(self.offsets.size - 1, -1, dtype=np.int64)
        slot[docs] = np.arange(n)
        per: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for t in qset.tolist():
            a, b = self.indptr[t], self.indptr[t + 1]
            d = self.doc[a:b]
            keep = slot[d] >= 0
            per[t] = (self.pos[a:b][keep], d[keep])
        qpairs = {(a, b) for a, b in zip(qseq[:-1], qseq[1:]) if a != b}
        if qpairs:
            cnt = np.zeros(n, dtype=np.int64)
            for a, b in qpairs:
                pa, da = per[a]
                ok = np.isin(pa + 1, per[b][0]) & (pa + 1 < self.offsets[da + 1])
                if ok.any():
                    cnt[slot[np.unique(da[ok])]] += 1
            phrase = (cnt / len(qpairs)).astype(np.float32)
        # a gap of `window` between docs keeps windows inside one doc; keys stay sorted per term
        keys = [p + d * (window + 1) for p, d in per.values()]
        allk = np.concatenate(keys)
        if allk.size:
            alld = np.concatenate([d for _, d in per.values()])
            cov = np.zeros(allk.size, dtype=np.int32)
            for pj in keys:
                if pj.size == 0:
                    continue
                i = np.searchsorted(pj, allk, side="left")
                hit = i < pj.size
                hit[hit] = pj[i[hit]] < allk[hit] + window
                cov += hit
            best = np.zeros(n, dtype=np.int32)
            np.maximum.at(best, slot[alld], cov)
            cover = (np.maximum(best - 1, 0) / (qset.size - 1)).astype(np.float32)
        return phrase, cover


# ---------------------------------------------------------------------------------------------
# Dense arm
# ---------------------------------------------------------------------------------------------
class DenseShards:
    """Per-shard HNSW over PCA-projected vectors + exact re-rank with the full vectors."""

    def __init__(self, vectors: np.ndarray, pca: np.ndarray, shard_docs: list[np.ndarray], indexes: list):
        self.vectors = vectors
        self.pca = pca  # 384 x PCA_DIM
        self.shard_docs = shard_docs
        self.indexes = indexes
        self._locks = [threading.Lock() for _ in indexes]

    def project(self, q: np.ndarray) -> np.ndarray:
        y = q.astype(np.float32) @ self.pca
        return y / max(float(np.linalg.norm(y)), 1e-12)

    def search_shard(
        self, shard: int, q: np.ndarray, qproj: np.ndarray, ef_search: int, refine_topk: int, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(global doc ids, exact cosine) of the best `k` of `refine_topk` ANN candidates."""
        idx = self.indexes[shard]
        count = idx.get_current_count()
        if count == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        kk = min(int(refine_topk), count)
        with self._locks[shard]:  # ef is index-global state in hnswlib
            idx.set_ef(max(int(ef_search), 1))
            labels, _ = idx.knn_query(qproj[None, :], k=kk, num_threads=1)
        cand = labels[0].astype(np.int64)
        sims = self.vectors[cand] @ q
        order = np.lexsort((cand, -sims))[:k]
        return cand[order], sims[order].astype(np.float32)


def _pca(vectors: np.ndarray, dim: int) -> np.ndarray:
    x = vectors.astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    p = vt[:dim].T
    # fix SVD sign ambiguity so the projection is reproducible
    signs = np.sign(p[np.argmax(np.abs(p), axis=0), np.arange(p.shape[1])])
    return (p * signs).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The whole index, cached by content hash
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EngineIndex:
    units: list[Unit]
    n_shards: int
    shard_of: np.ndarray
    shard_docs: list[np.ndarray]
    lex: SparseArm
    lex_idf: np.ndarray
    streams: np.ndarray
    offsets: np.ndarray
    struct: SparseArm
    dense: DenseShards | None
    key: str
    corpus_digest: str
    positions: Positions | None = None

    def __post_init__(self) -> None:
        if self.positions is None:
            self.positions = Positions.build(self.streams, self.offsets, len(self.lex.vocab))


def index_key(corpus: Corpus, n_shards: int, dense: bool) -> str:
    return sha256_hex(
        canonical_json(
            {
                "v": INDEX_VERSION,
                "corpus": corpus.digest,
                "shards": n_shards,
                "k1": BM25_K1,
                "b": BM25_B,
                "pca": PCA_DIM,
                "M": HNSW_M,
                "efc": HNSW_EF_CONSTRUCTION,
                "seed": HNSW_SEED,
                "dense": dense,
                "fields": STRUCT_FIELD_WEIGHTS,
                "dense_chars": DENSE_TEXT_CHARS,
            }
        ).encode()
    )[:24]


def build_embeddings(corpus: Corpus, cache_dir: str | os.PathLike, progress=True) -> np.ndarray:
    """(n_units, 384) float32 MiniLM vectors of the corpus, cached as one .npy by digest."""

    key = sha256_hex(canonical_json({"corpus": corpus.digest, "model": MODEL_ID, "chars": DENSE_TEXT_CHARS}).encode())[
        :24
    ]
    target = Path(cache_dir) / "lens_engine" / f"vectors-{key}.npy"
    if target.is_file():
        v = np.load(target)
        if v.shape[0] == len(corpus.units):
            return v
    t0 = time.monotonic()
    texts = [dense_text(u) for u in corpus.units]
    v = embed_texts(texts, cache_dir=cache_dir, progress=progress)
    dt = time.monotonic() - t0
    log.info("embedded %d functions in %.1fs (%.1f/s incl. cache hits)", len(texts), dt, len(texts) / max(dt, 1e-9))
    with atomic_path(target, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, v)
    return v


def _shards(corpus: Corpus, n_shards: int) -> tuple[np.ndarray, list[np.ndarray]]:
    shard_of = np.array([shard_of_path(u.path, n_shards) for u in corpus.units], dtype=np.int32)
    return shard_of, [np.flatnonzero(shard_of == s) for s in range(n_shards)]


def _save_sparse(path: Path, m: sp.csr_matrix) -> None:
    sp.save_npz(path, m.tocsr(), compressed=False)


def _build_files(corpus: Corpus, n_shards: int, out: Path, vectors: np.ndarray | None) -> None:
    t0 = time.monotonic()
    streams_list, bags = [], []
    for u in corpus.units:
        s, b = analyze(u.text)
        streams_list.append(s)
        bags.append(b)
    lex_vocab, lex_w, lex_idf = _bm25_matrix(bags)
    offsets = np.zeros(len(streams_list) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in streams_list])
    streams = np.array([lex_vocab[t] for s in streams_list for t in s], dtype=np.int32)
    st_vocab, st_w, _ = _struct_matrix(corpus.units)
    _save_sparse(out / "lex.npz", lex_w)
    _save_sparse(out / "struct.npz", st_w)
    np.save(out / "lex_idf.npy", lex_idf)
    np.save(out / "streams.npy", streams)
    np.save(out / "offsets.npy", offsets)
    (out / "lex_vocab.json").write_text(json.dumps(lex_vocab, ensure_ascii=False))
    (out / "struct_vocab.json").write_text(json.dumps(st_vocab, ensure_ascii=False))
    log.info(
        "sparse indexes: %d docs, %d lexical terms, %d symbol terms (%.1fs)",
        len(bags),
        len(lex_vocab),
        len(st_vocab),
        time.monotonic() - t0,
    )
    if vectors is not None:
        import hnswlib

        t0 = time.monotonic()
        pca = _pca(vectors, min(PCA_DIM, vectors.shape[1], max(1, vectors.shape[0] - 1)))
        np.save(out / "pca.npy", pca)
        proj = vectors @ pca
        proj /= np.maximum(np.linalg.norm(proj, axis=1, keepdims=True), 1e-12)
        _, shard_docs = _shards(corpus, n_shards)
        for s, docs in enumerate(shard_docs):
            idx = hnswlib.Index(space="cosine", dim=pca.shape[1])
            idx.init_index(
                max_elements=max(len(docs), 1), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=HNSW_SEED
            )
            if len(docs):
                idx.add_items(proj[docs], docs.astype(np.int64), num_threads=1)
            idx.save_index(str(out / f"hnsw-{s}.bin"))
        log.info("HNSW: %d shards, dim %d (%.1fs)", n_shards, pca.shape[1], time.monotonic() - t0)
    (out / "meta.json").write_text(
        json.dumps(
            {"corpus": corpus.digest, "n_units": len(corpus.units), "shards": n_shards, "dense": vectors is not None}
        )
    )


def build_index(
    corpus: Corpus, cache_dir: str | os.PathLike, n_shards: int = DEFAULT_SHARDS, dense: bool = True, progress=True
) -> EngineIndex:
    """Build (or load from `cache_dir`) every index of the corpus."""
    key = index_key(corpus, n_shards, dense)
    root = Path(cache_dir) / "lens_engine"
    final = root / f"index-{key}"
    vectors = build_embeddings(corpus, cache_dir, progress=progress) if dense else None
    if not (final / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".index-{key}.", dir=root))
        try:
            _build_files(corpus, n_shards, tmp, vectors)
            try:
                os.replace(tmp, final)
            except OSError:  # built concurrently by someone else: keep theirs
                if not (final / "meta.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return load_index(corpus, final, n_shards, vectors, key)


def load_index(corpus: Corpus, path: Path, n_shards: int, vectors: np.ndarray | None, key: str) -> EngineIndex:
    meta = json.loads((path / "meta.json").read_text())
    if meta["corpus"] != corpus.digest or meta["n_units"] != len(corpus.units):
        raise RuntimeError(f"{path}/meta.json: index was built for another corpus")
    shard_of, shard_docs = _shards(corpus, n_shards)
    lex = SparseArm(
        json.loads((path / "lex_vocab.json").read_text()), sp.load_npz(path / "lex.npz").tocsr(), shard_docs
    )
    struct = SparseArm(
        json.loads((path / "struct_vocab.json").read_text()), sp.load_npz(path / "struct.npz").tocsr(), shard_docs
    )
    dense = None
    if vectors is not None and meta.get("dense"):
        import hnswlib

        pca = np.load(path / "pca.npy")
        indexes = []
        for s, docs in enumerate(shard_docs):
            idx = hnswlib.Index(space="cosine", dim=pca.shape[1])
            idx.load_index(str(path / f"hnsw-{s}.bin"), max_elements=max(len(docs), 1))
            idx.set_num_threads(1)
            indexes.append(idx)
        dense = DenseShards(vectors.astype(np.float32), pca, shard_docs, indexes)
    return EngineIndex(
        units=corpus.units,
        n_shards=n_shards,
        shard_of=shard_of,
        shard_docs=shard_docs,
        lex=lex,
        lex_idf=np.load(path / "lex_idf.npy"),
        streams=np.load(path / "streams.npy"),
        offsets=np.load(path / "offsets.npy"),
        struct=struct,
        dense=dense,
        key=key,
        corpus_digest=corpus.digest,
    )


def term_counts(tokens: Sequence[str]) -> dict[str, float]:
    return {t: float(c) for t, c in Counter(tokens).items()}
