from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from lens_core.common.contracts import GROUND_TRUTH_SCHEMA, QUERIES_SCHEMA
from lens_engine.index import DenseShards, Positions, SparseArm, _bm25_matrix, _pca
from lens_engine.suites import build_suites, first_sentence, split_of


def proximity_features(
    streams: np.ndarray, offsets: np.ndarray, docs: np.ndarray, qseq: Sequence[int], window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reference (test oracle): a plain scan of the candidates' token streams.

    Per candidate doc: (phrase fraction, window coverage), both in [0, 1], vectorised.

    phrase fraction: share of the query's adjacent term pairs that occur adjacently, in order,
    in the doc's sub-token stream. window coverage: (most distinct query terms inside any
    window of `window` stream tokens − 1) / (distinct query terms − 1).
    """
    n = len(docs)
    phrase = np.zeros(n, dtype=np.float32)
    cover = np.zeros(n, dtype=np.float32)
    qset = np.unique(np.asarray(qseq, dtype=np.int64))
    if n == 0 or qset.size < 2:
        return phrase, cover
    starts = offsets[docs]
    lens = offsets[docs + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return phrase, cover
    doc_idx = np.repeat(np.arange(n), lens)
    base = np.repeat(np.cumsum(lens) - lens, lens)
    toks = streams[np.repeat(starts, lens) + (np.arange(total) - base)].astype(np.int64)
    vsize = int(max(streams.max(initial=0), qset.max())) + 1
    # phrase: adjacent query pairs found adjacent in the doc
    qpairs = np.unique(
        np.array(
            [qseq[i] * vsize + qseq[i + 1] for i in range(len(qseq) - 1) if qseq[i] != qseq[i + 1]], dtype=np.int64
        )
    )
    if qpairs.size and total > 1:
        keys = toks[:-1] * vsize + toks[1:]
        ok = (doc_idx[:-1] == doc_idx[1:]) & np.isin(keys, qpairs)
        if ok.any():
            pairs = np.unique(np.stack([doc_idx[:-1][ok], keys[ok]], axis=1), axis=0)
            phrase = (np.bincount(pairs[:, 0], minlength=n) / qpairs.size).astype(np.float32)
    # window coverage
    m = np.isin(toks, qset)
    if m.any():
        md = doc_idx[m]
        gpos = np.flatnonzero(m) + md * (window + 1)  # a gap of `window` between docs
        mt = np.searchsorted(qset, toks[m])
        cov = np.zeros(md.size, dtype=np.int32)
        for j in range(qset.size):
            pj = gpos[mt == j]
            if pj.size == 0:
                continue
            idx = np.searchsorted(pj, gpos, side="left")
            hit = idx < pj.size
            hit[hit] = pj[idx[hit]] < gpos[hit] + window
            cov += hit
        best = np.zeros(n, dtype=np.int32)
        np.maximum.at(best, md, cov)
        cover = (np.maximum(best - 1, 0) / (qset.size - 1)).astype(np.float32)
    return phrase, cover


def test_bm25_sanity():
    bags = [["parse", "json", "json"], ["parse", "xml"], ["open", "file"], ["parse", "json"]]
    vocab, w, idf = _bm25_matrix(bags)
    assert idf[vocab["xml"]] > idf[vocab["parse"]]  # rare beats common
    q = w[:, [vocab["json"]]].toarray().ravel()
    assert q[0] > q[3] > 0 and q[1] == q[2] == 0  # tf saturates but grows
    # length normalisation: same tf, shorter doc scores higher
    vocab2, w2, _ = _bm25_matrix([["a", "b"], ["a", "b", "c", "d", "e", "f"], ["g"]])
    col = w2[:, [vocab2["a"]]].toarray().ravel()
    assert col[0] > col[1]


def test_proximity_and_phrase_features():
    # vocab ids: 0 read, 1 file, 2 x
    streams = np.array([0, 1, 2, 2, 1, 2, 2, 2, 2, 0, 2, 0, 2], dtype=np.int32)
    offsets = np.array([0, 4, 10, 13])
    docs = np.array([0, 1, 2])
    phrase, cover = proximity_features(streams, offsets, docs, [0, 1], window=16)
    assert phrase.tolist() == [1.0, 0.0, 0.0]
    assert cover.tolist() == [1.0, 1.0, 0.0]
    _, cover_small = proximity_features(streams, offsets, docs, [0, 1], window=3)
    assert cover_small.tolist() == [1.0, 0.0, 0.0]  # the window knob matters
    pos = Positions.build(streams, offsets, 3)
    for window in (3, 16):
        got = pos.proximity(docs, [0, 1], window)
        want = proximity_features(streams, offsets, docs, [0, 1], window)
        assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_positional_postings_equal_the_stream_scan():
    """The engine's postings-based proximity equals the reference stream scan exactly."""
    rng = np.random.default_rng(7)
    n_docs, vocab = 300, 40
    lens = rng.integers(0, 60, n_docs)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    streams = rng.zipf(1.6, int(offsets[-1])).clip(1, vocab).astype(np.int32) - 1
    pos = Positions.build(streams, offsets, vocab)
    for _ in range(300):
        docs = rng.permutation(n_docs)[: rng.integers(1, 120)]
        qseq = rng.integers(0, vocab // 2, rng.integers(1, 6)).tolist()
        window = int(rng.choice([2, 4, 8, 16, 32]))
        got = pos.proximity(docs, qseq, window)
        want = proximity_features(streams, offsets, docs, qseq, window)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_sparse_shard_scoring_matches_scipy_matvec():
    rng = np.random.default_rng(3)
    w = sp.random(500, 200, density=0.05, format="csr", random_state=3, dtype=np.float32)
    shard_docs = [np.arange(0, 250), np.arange(250, 500)]
    arm = SparseArm({f"t{i}": i for i in range(200)}, w, shard_docs)
    for _ in range(50):
        ids = np.unique(rng.integers(0, 200, rng.integers(0, 8)))
        qw = rng.uniform(0.2, 2.0, ids.size).astype(np.float32)
        for s in range(2):
            want = np.asarray(arm.shard_mats[s][:, ids] @ qw).ravel() if ids.size else np.zeros(250)
            np.testing.assert_allclose(arm.score_shard(s, ids, qw), want, rtol=1e-5, atol=1e-6)


def test_ef_search_and_refine_topk_change_dense_results():
    import hnswlib

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pca = _pca(x, 8)
    proj = x @ pca
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    idx = hnswlib.Index(space="cosine", dim=8)
    idx.init_index(max_elements=3000, ef_construction=40, M=4, random_seed=1)
    idx.add_items(proj, np.arange(3000), num_threads=1)
    d = DenseShards(x, pca, [np.arange(3000)], [idx])
    qs = rng.normal(size=(30, 32)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    truth = [set(np.argsort(-(x @ q))[:5]) for q in qs]

    def recall(ef, rk):
        return np.mean(
            [
                len(truth[i] & set(d.search_shard(0, q, d.project(q), ef, rk, 5)[0].tolist())) / 5
                for i, q in enumerate(qs)
            ]
        )

    assert recall(5, 5) < recall(400, 5)  # ef_search
    assert recall(5, 5) < recall(5, 300)  # refine_topk (exact re-rank of more candidates)


def test_suites_schema_unique_split(small_corpus, suites):
    q, g = suites
    assert q.columns == QUERIES_SCHEMA.names and g.columns == GROUND_TRUTH_SCHEMA.names
    assert q["qid"].n_unique() == q.height > 100
    assert q.select(["suite", "text"]).unique().height == q.height  # no duplicates
    assert set(q["suite"]) == {"nl", "identifier", "structural"}
    assert set(q["intent"]) <= {"nl", "hard_nl", "identifier", "structural"}
    assert set(g["qid"]) == set(q["qid"]) and (g["rel"] == 3).all()
    by_loc = {(u.path, u.start_line): u for u in small_corpus.units}
    anchors = g.join(q, on="qid")
    for row in anchors.filter(anchors["suite"] != "structural").iter_rows(named=True):
        u = by_loc[(row["path"], row["start_line"])]
        assert not u.is_stub and split_of(u.package) == "test"
        assert row["end_line"] == u.end_line
    # queries come from one split only; splits never share a package
    pk = {split_of(p) for p in small_corpus.packages}
    assert pk <= {"train", "dev", "test"}
    dev_q, _ = build_suites(small_corpus, split="dev")
    assert not set(dev_q["text"]) & set(q.filter(q["suite"] == "nl")["text"])
    # deterministic
    q2, g2 = build_suites(small_corpus)
    assert q2.equals(q) and g2.equals(g)


def test_nl_queries_are_docstring_first_sentences(small_corpus, suites):
    q, g = suites
    nl = q.filter(q["suite"] == "nl").join(g, on="qid")
    by_loc = {(u.path, u.start_line): u for u in small_corpus.units}
    for row in nl.iter_rows(named=True):
        u = by_loc[(row["path"], row["start_line"])]
        assert row["text"] == first_sentence(u.doc) and len(row["text"].split()) >= 4
        assert row["text"] not in u.text


def test_first_sentence():
    assert first_sentence("Return the thing. And more.\n\nDetails.") == "Return the thing."
    assert first_sentence("Parse e.g. a file\nacross lines") == "Parse e.g. a file across lines"
