from __future__ import annotations

import math

import numpy as np
import pytest

from lens_core.common.contracts import SHARD_FIELD_TYPES, SHARD_STATUSES, WHY_REASONS, WIRE_DONE_FIELDS, WIRE_HIT_FIELDS
from lens_engine.engine import StragglerModel


def _run(eng, q, system, k=10, deadline=2000.0, qid=None):
    lines = list(eng.search(q, k, system, deadline, qid=qid, debug=True))
    return lines[:-1], lines[-1]


def _metrics(eng, queries, gt, system, k=10):
    rel = {}
    for r in gt.iter_rows(named=True):
        rel.setdefault(r["qid"], set()).add((r["path"], r["start_line"], r["end_line"]))
    out = {}
    for qid, text, intent in zip(queries["qid"], queries["text"], queries["intent"]):
        hits, _ = _run(eng, text, system, k=k, qid=qid)
        spans = [(h["path"], h["start_line"], h["end_line"]) for h in hits]
        r = rel[qid]
        dcg = sum(1 / math.log2(i + 2) for i, s in enumerate(spans) if s in r)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(r))))
        mrr = next((1 / (i + 1) for i, s in enumerate(spans) if s in r), 0.0)
        out.setdefault(intent, []).append((dcg / idcg, mrr))
    return {i: np.array(v).mean(axis=0) for i, v in out.items()}


def test_quality_floor(engine, suites, base):
    q, g = suites
    q = q.filter(q["suite"] != "structural").head(150)
    m = _metrics(engine, q, g, base)
    assert m["identifier"][1] > 0.8  # MRR@10
    nl = np.concatenate([[m[i][0]] for i in ("nl", "hard_nl") if i in m])
    assert m["nl"][0] > 0.5  # nDCG@10 (measured ~0.8 on this subset)
    # a broken index (ground truth pointing elsewhere) scores ~0: the floor is far above it
    shuffled = g.with_columns(g["qid"].shuffle(seed=1))
    broken = _metrics(engine, q.filter(q["intent"] == "nl"), shuffled, base)
    assert broken["nl"][0] < 0.2 < m["nl"][0] - 0.3
    assert nl.size


def test_wire_format(engine, suites, base):
    q, _ = suites
    for text in q["text"].head(20).to_list():
        lines = list(engine.search(text, 7, base, 1000.0))
        *hits, done = lines
        assert done["type"] == "done" and all(h["type"] == "hit" for h in hits)
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1)) and 1 <= len(hits) <= 7
        for h in hits:
            for f, t in WIRE_HIT_FIELDS.items():
                assert isinstance(h[f], t), (f, h)
            assert h["why"] and set(h["why"]) <= set(WHY_REASONS) and len(set(h["why"])) == len(h["why"])
            assert isinstance(h["shard"], int) and h["start_line"] <= h["end_line"]
        scores = [h["score"] for h in hits]
        assert all(a > b for a, b in zip(scores, scores[1:]))  # tie-free
        for f, t in WIRE_DONE_FIELDS.items():
            assert isinstance(done[f], t), f
        assert set(done) == {"type", "lat_ms", "cfg_hash", "shards", "cost"}
        assert done["cfg_hash"] == base.cfg_hash and len(done["shards"]) >= engine.index.n_shards
        for s in done["shards"]:
            for f, t in SHARD_FIELD_TYPES.items():
                assert isinstance(s[f], t), (f, s)
            assert s["status"] in SHARD_STATUSES
        assert isinstance(done["cost"]["probes"], int) and done["cost"]["cpu_ms"] > 0


def test_rebuilt_cache_identical(engine, tmp_path, suites, base):
    import shutil

    from lens_engine.engine import Engine
    from lens_engine.index import build_index

    # same vectors (embedding is the slow, separately cached step); sparse + HNSW rebuilt
    (tmp_path / "lens_engine").mkdir()
    for f in (engine.cache_dir / "lens_engine").glob("vectors-*.npy"):
        shutil.copy(f, tmp_path / "lens_engine" / f.name)
    ix2 = build_index(engine.corpus, tmp_path, n_shards=engine.index.n_shards, dense=True, progress=False)
    assert (ix2.lex.weights != engine.index.lex.weights).nnz == 0
    e2 = Engine(ix2, engine.corpus, cache_dir=engine.cache_dir, straggler=StragglerModel(p=0.0))
    e2._qvec = engine._qvec
    sys_dense = base.model_copy(update={"router_tau": 1.0, "min_conf_gain": 0.0, "spend_cap_ms": 1e6})
    for text in suites[0]["text"].head(10).to_list():
        a = [(h["path"], h["start_line"], h["score"], h["why"]) for h in _run(engine, text, sys_dense)[0]]
        b = [(h["path"], h["start_line"], h["score"], h["why"]) for h in _run(e2, text, sys_dense)[0]]
        assert a == b
    e2.close()


def _nl(suites, n=25):
    q = suites[0]
    return q.filter(q["suite"] == "nl")["text"].head(n).to_list()


def _results(eng, texts, system):
    return [
        [(h["path"], h["start_line"], h["score"], tuple(h["why"])) for h in _run(eng, t, system, k=10)[0]]
        for t in texts
    ]


@pytest.mark.parametrize(
    "knob,a,b",
    [
        ("phrase_boost", 1.0, 2.0),
        ("window_tokens", 2, 64),
        ("proximity_weight", 0.0, 3.0),
        ("router_tau", 0.3, 0.95),
        ("min_conf_gain", 0.0, 0.5),
        ("spend_cap_ms", 1e-6, 1e6),
        ("refine_topk", 2, 64),
    ],
)
def test_knob_changes_results(engine, suites, base, knob, a, b):
    texts = _nl(suites)
    ra = _results(engine, texts, base.model_copy(update={knob: a}))
    rb = _results(engine, texts, base.model_copy(update={knob: b}))
    assert ra != rb, knob


def test_ef_search_changes_dense_work(engine, suites, base):
    # shards of this subset are small (HNSW exact either way); ef is checked on a big index in
    # test_index_suites; here: the knob reaches hnswlib (ef is index state, set per search)
    s = base.model_copy(update={"router_tau": 1.0, "min_conf_gain": 0.0, "ef_search": 7})
    _run(engine, _nl(suites, 1)[0], s)
    assert any(ix.ef == 7 for ix in engine.index.dense.indexes)


def _straggle_engine(fresh_engine, shard, scale_ms=200.0):
    fresh_engine.straggler = StragglerModel(p=0.0, scale_ms=scale_ms, cap_ms=400.0, primary_p={shard: 1.0})
    return fresh_engine


def test_hedging_cuts_straggler_latency(fresh_engine, base):
    eng = _straggle_engine(fresh_engine, 3)
    q = "read the file contents"
    _, d0 = _run(eng, q, base)
    hedge = base.model_copy(update={"tail_hedge": True, "hedge_delay_ms": 6.0})
    _, d1 = _run(eng, q, hedge)
    assert d0["lat_ms"] > 150 and d1["lat_ms"] < d0["lat_ms"] / 2
    s3 = [s for s in d1["shards"] if s["shard"] == 3]
    assert len(s3) == 2 and {s["status"] for s in s3} == {"ok", "cancelled"}
    loser = next(s for s in s3 if s["status"] == "cancelled")
    assert loser["cancel_ts"] is not None and d1["cost"]["probes"] >= d0["cost"]["probes"] + 1
    # hedge_delay_ms changes when the hedge fires (fresh history: delay used as is)
    eng._shard_lat = [type(d)(maxlen=64) for d in eng._shard_lat]
    _, d2 = _run(eng, q, hedge.model_copy(update={"hedge_delay_ms": 80.0}))
    assert d2["lat_ms"] > d1["lat_ms"] + 40


def test_ta_stop_cancels_shards(fresh_engine, base, suites):
    eng = fresh_engine
    q = suites[0].filter(suites[0]["suite"] == "identifier")["text"][0]
    plan = eng.plan(q, 5, base)
    empty = [
        s
        for s in range(eng.index.n_shards)
        if eng.index.lex.upper_bound(s, plan.lex_ids, plan.lex_qw) == 0
        and eng.index.struct.upper_bound(s, plan.st_ids, plan.st_qw) == 0
    ]
    assert empty, "need a shard without the query's terms"
    _straggle_engine(eng, empty[0])
    _, d0 = _run(eng, q, base, k=5)
    _, d1 = _run(eng, q, base.model_copy(update={"ta_stop": True}), k=5)
    assert d1["router"]["stopped_by"] == "ta"
    st = {s["shard"]: s["status"] for s in d1["shards"]}
    assert st[empty[0]] == "cancelled" and d1["lat_ms"] < d0["lat_ms"] - 100


def test_lts_stop_stops_waiting(fresh_engine, base):
    eng = _straggle_engine(fresh_engine, 2, scale_ms=300.0)
    q = "return the file name for the module"
    _, d0 = _run(eng, q, base)
    _, d1 = _run(eng, q, base.model_copy(update={"lts_stop": True}))
    assert d1["router"]["stopped_by"] == "lts" and d1["lat_ms"] < d0["lat_ms"] - 100
    assert {s["shard"]: s["status"] for s in d1["shards"]}[2] == "cancelled"


def test_deadline_times_out_shards(fresh_engine, base):
    eng = _straggle_engine(fresh_engine, 5)
    hits, d = _run(eng, "open a file for reading", base, k=50, deadline=60.0)
    st = {s["shard"]: s for s in d["shards"]}
    assert st[5]["status"] == "timeout" and st[5]["done_ts"] is None
    assert 55 <= d["lat_ms"] < 150 and all(h["shard"] != 5 for h in hits)


def test_straggler_model_seeded():
    m = StragglerModel(p=0.5, seed=3)
    draws = [m.delay_ms("q1", s, 0) for s in range(64)]
    assert draws == [m.delay_ms("q1", s, 0) for s in range(64)]
    share = np.mean([d > 0 for d in draws])
    assert 0.25 < share < 0.75 and all(d == 0 or 20 <= d <= 300 for d in draws)
    assert all(StragglerModel(p=0.0).delay_ms("q", s, 0) == 0 for s in range(8))


def test_arm_ablation_fuses_only_the_asked_arms(engine, suites, base):
    q, _ = suites
    texts = q.filter(q["suite"] == "nl")["text"].head(8).to_list()
    for text in texts:
        for only in ({"lex"}, {"struct"}, {"sem"}, {"lex", "sem"}):
            hits = list(engine.search(text, 20, base, 2000.0, arms=frozenset(only)))[:-1]
            assert all(set(h["why"]) <= only for h in hits)
        sem = list(engine.search(text, 20, base, 2000.0, arms=frozenset({"sem"})))
        assert sem[:-1] and sem[-1]["cost"]["probes"] > engine.index.n_shards  # dense probes counted
    with pytest.raises(ValueError, match="arms"):
        list(engine.search(texts[0], 10, base, 2000.0, arms=frozenset({"bogus"})))
