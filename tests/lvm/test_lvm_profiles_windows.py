"""Issue 21 item 1 at small scale: profiles (LVM_PROFILE=full and its CPU block), windows with a
long context length (left-padded article prefixes), GRUs at several context lengths kept by
validation Hit@5, the concept-vector content-hash cache and progress with ETA; item 3: the
in-batch Hit@K beside the full-bank one."""

import json

import numpy as np
import pytest
import torch

from lvm_core import models as M
from lvm_core.evaluate import evaluate_predictors, inbatch_ranks
from lvm_core.sequences import gather, make_sequences, read_sequences, write_sequences
from lvm_core.settings import load_config
from lvm_core.train import Predictor, SplitData, build_predictor, fit_ridge, train_memory_gru
from lvm_core.vectors import build_vectors, eta_progress, eta_text, write_corpus


def _ids(sizes):
    ids, lanes = [], []
    for i, n in enumerate(sizes):
        ids += [f"a{i:02d}"] * n
        lanes += [f"l{i % 2}"] * n
    return np.asarray(ids), np.asarray(lanes)


def test_full_profile_and_its_cpu_block(monkeypatch):
    monkeypatch.delenv("LVM_PROFILE", raising=False)
    monkeypatch.delenv("LVM_CONFIG", raising=False)
    small = load_config()
    assert small["profile"] == "small" and small["sequences"]["context_len"] == 8
    assert small["corpus"]["max_sentences"] == 8000
    monkeypatch.setenv("LVM_PROFILE", "full")
    cpu = load_config(device="cpu")
    assert cpu["profile"] == "full" and cpu["profile_device"] == "cpu"
    assert cpu["corpus"]["max_sentences"] == 0  # the whole corpus
    assert cpu["sequences"]["context_len"] == 500 and cpu["sequences"]["min_context"] == 8
    assert cpu["train"]["context_lens"] == [100]  # the CPU path: 500-step GRU left to a GPU
    assert cpu["train"]["epoch_windows"] > 0
    assert cpu["train"]["delta_base"] == "ridge" and small["train"]["delta_base"] == "last"
    # The profile argument (the Dagster run tag) wins over the environment.
    assert load_config(profile="small")["sequences"]["context_len"] == 8
    # Env settings still apply over a profile.
    monkeypatch.setenv("LVM_MAX_SENTENCES", "30000")
    assert load_config(device="cpu")["corpus"]["max_sentences"] == 30000
    monkeypatch.setenv("LVM_PROFILE", "huge")
    with pytest.raises(ValueError, match="unknown profile"):
        load_config()


def test_full_profile_on_cuda_trains_at_100_and_500(monkeypatch):
    import lvm_core.settings as S

    monkeypatch.setenv("LVM_PROFILE", "full")
    monkeypatch.setattr(S, "pick_device", lambda preferred=None: "cuda")  # no GPU in the test box
    cfg = S.load_config()
    assert cfg["profile_device"] == "cuda"
    assert cfg["train"]["context_lens"] == [100, 500] and cfg["train"]["epoch_windows"] == 0


def test_long_context_windows_keep_short_articles_and_pad_left():
    sizes = [5, 12, 3, 9, 20, 7, 11, 6, 14, 8]
    ids, lanes = _ids(sizes)
    seq = make_sequences(ids, lanes, context_len=10, stride=1, eval_fraction=0.3, val_fraction=0.2, min_context=2)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Every sentence with >= 2 earlier sentences of its article is a target, also in articles
    # shorter than the context length.
    assert seq.windows.num_rows == sum(max(0, n - 2) for n in sizes)
    assert seq.skipped_short == 0
    for r in seq.windows.to_pylist():
        a = int(r["article_id"][1:])
        assert r["ctx_start"] == max(first[a], r["target"] - 10)
        assert r["target"] - r["ctx_start"] >= 2
    vecs = np.arange(1, 1 + sum(sizes), dtype=np.float32)[:, None]
    x = gather(vecs, np.array([0]), 10, np.array([3]))  # article a00, target row 3: 3 earlier rows
    assert x[0, :, 0].tolist() == [0] * 7 + [1, 2, 3]
    # Full windows (no min_context): the same windows and content hash as before issue 21.
    full = make_sequences(ids, lanes, 3, 1, 0.3, 0.2)
    same = make_sequences(ids, lanes, 3, 1, 0.3, 0.2, min_context=3)
    assert full.content_hash() == same.content_hash()
    assert all(r["target"] == r["ctx_start"] + 3 for r in full.windows.to_pylist())


def test_windows_round_trip_keeps_min_context(tmp_path):
    ids, lanes = _ids([9, 12, 7, 10, 15, 8, 11, 13])
    seq = make_sequences(ids, lanes, 6, 1, 0.3, 0.2, min_context=2)
    write_sequences(seq, tmp_path)
    back, meta = read_sequences(tmp_path)
    assert meta["min_context"] == 2 and back.min_ctx == 2 and back.content_hash() == seq.content_hash()


def test_baselines_ignore_left_padding():
    v = np.zeros((1, 4, 3), np.float32)
    v[0, 2] = [1, 0, 0]
    v[0, 3] = [0, 1, 0]
    assert np.allclose(M.mean_context(v)[0], np.array([1, 1, 0]) / np.sqrt(2))
    feats = M.ridge_features(v, 2)
    assert np.allclose(feats[0, -3:], [0.5, 0.5, 0.0])  # mean over the 2 real sentences


def test_exclusion_skips_padding_and_gru_context_lengths(small_cfg, chains_data):
    vecs, ids, lanes = chains_data
    seq = make_sequences(ids, lanes, 6, 1, 0.3, 0.2, min_context=2)
    ev = SplitData(seq, vecs, "eval")
    n_ctx = ev.target - ev.start
    assert ((ev.exclude >= 0).sum(axis=1) == n_ctx).all()  # only real context sentences removed
    cfg = json.loads(json.dumps(small_cfg))
    cfg["train"] |= {"context_lens": [2, 6], "epochs": 6, "patience": 6}
    res = train_memory_gru(seq, vecs, cfg, "cpu", progress=False)
    by = res.metrics["by_context_len"]
    assert set(by) == {"2", "6"}
    kept = res.config["context_len"]
    assert by[str(kept)]["val_hit5"] == max(v["val_hit5"] for v in by.values()) == res.metrics["val_hit5"]
    pred = build_predictor({"variant": "memory_gru", "config": res.config, "state": res.state}, "cpu")
    # The predictor reads only the last `kept` positions of the (longer) windows.
    x = ev.contexts(slice(0, 5))
    x2 = x.copy()
    x2[:, : x.shape[1] - kept] = 0.5
    assert np.allclose(pred.predict(x), pred.predict(x2), atol=1e-6)
    # The rotation chain is learnable from the last sentence: the GRU beats copy-last.
    assert ev.hit_rate(pred, 1) > ev.hit_rate(Predictor("copy_last", M.copy_last), 1) + 0.2
    with pytest.raises(ValueError, match="context_lens"):
        train_memory_gru(seq, vecs, {**cfg, "train": {**cfg["train"], "context_lens": [7]}}, "cpu", False)
    # Ridge featurises the long windows chunk by chunk, the same as in one piece.
    r = fit_ridge(seq, vecs, cfg)
    start, target, _ = seq.split_rows("train")
    x_all = gather(vecs, start, 6, target)
    one = M.Ridge(r.config["lam"], r.config["last_k"]).fit(x_all, vecs[target])
    assert np.allclose(one.W, r.state["W"].numpy(), atol=1e-4)


def test_inbatch_hits_hand_computed():
    t = np.eye(4, dtype=np.float32)
    preds = t.copy()
    preds[1] = 0.6 * t[1] + 0.8 * t[2]  # query 1 is closer to query 2's target: rank 2
    preds[3] = t[0]  # query 3 scores 0 on its own target, tied with two others: rank 4 (ties count against)
    r = inbatch_ranks(preds, t, batch=4, seed=0)
    assert sorted(r.tolist()) == [1, 1, 2, 4]
    assert inbatch_ranks(preds, t, batch=8, seed=0).size == 0  # incomplete batch dropped


def test_eval_reports_inbatch_beside_full_bank(small_cfg, chains_data):
    vecs, ids, lanes = chains_data
    seq = make_sequences(ids, lanes, 4, 1, 0.3, 0.2)
    data = SplitData(seq, vecs, "eval")
    table, ranks, stats = evaluate_predictors(
        {"mean_context": Predictor("mean_context", M.mean_context)}, data, small_cfg
    )
    ib = stats["mean_context"]["inbatch"]
    assert ib["batch_size"] == 16 and ib["n_queries"] == data.target.size // 16 * 16
    assert ib["hit5_ci"][0] <= ib["hit5"] <= ib["hit5_ci"][1]
    full5 = next(r["hit"] for r in table.to_pylist() if r["lane"] == "all" and r["k"] == 5)
    # 16 candidates make an easier test than the whole bank (~hundreds here).
    assert data.bank.n > 100 and ib["hit5"] > full5


def test_vectors_content_hash_cache_and_eta(tmp_path, caplog):
    from lvm_core.corpus import Article, Corpus

    calls = []

    def embed(texts, cache_dir=None, progress=False, batch_size=64, device=None):
        calls.append(len(texts))
        if callable(progress):
            progress(len(texts), len(texts))
        rng = np.random.default_rng(len(calls))
        v = rng.standard_normal((len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    arts = [Article(f"a{i}", "lane", tuple(f"sentence {i} {j} words here" for j in range(5))) for i in range(4)]
    corpus = Corpus("test", arts, ["lane"], {}, False)
    write_corpus(corpus, tmp_path)
    lines = []
    m1 = build_vectors(tmp_path, None, progress=eta_progress("embedded", lines.append), embed_fn=embed)
    assert not m1["reused"] and calls == [20] and lines and "ETA" not in lines[-1] and "20/20" in lines[-1]
    m2 = build_vectors(tmp_path, None, progress=False, embed_fn=embed)
    assert m2["reused"] and calls == [20] and m2["sha256"] == m1["sha256"]
    # A changed vectors file (sha256 mismatch) is re-embedded, not trusted.
    p = tmp_path / "concept_vectors.npy"
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))
    m3 = build_vectors(tmp_path, None, progress=False, embed_fn=embed)
    assert not m3["reused"] and calls == [20, 20]
    assert eta_text(50, 200, 10.0) == "50/200 (25.0%, 5.0/s, ETA 0.5 min)"
    assert eta_text(1000, 40000, 100.0) == "1000/40000 (2.5%, 10.0/s, ETA 1h05m)"


def test_lvm_schedules_run_the_full_profile(monkeypatch):
    import datetime as dt
    from types import SimpleNamespace

    from lvm_assets import assets as A
    from schedules import jobs as J

    monkeypatch.delenv("LVM_PROFILE", raising=False)
    tick = dt.datetime(2026, 11, 23, 11, tzinfo=dt.timezone.utc)  # Monday 06:00 US/Eastern
    rr = J.run_request_for(J.ROWS["lvm_drift_check_schedule"], tick)
    assert rr.tags["lvm/profile"] == "full"
    assert A._cfg(SimpleNamespace(run_tags=rr.tags))["profile"] == "full"
    assert A._cfg(SimpleNamespace(run_tags={}))["profile"] == "small"  # the demo's runs


def test_gru_on_a_ridge_base_starts_as_ridge(small_cfg, chains_data, tmp_path):
    from lvm_core.train import load_checkpoint, save_checkpoint

    vecs, ids, lanes = chains_data
    seq = make_sequences(ids, lanes, 4, 1, 0.3, 0.2)
    cfg = json.loads(json.dumps(small_cfg))
    ridge = fit_ridge(seq, vecs, cfg)
    r = M.Ridge.from_state(ridge.state)
    m = M.MemoryGRU(16, 8, 4, 0.0, ridge_last_k=r.W.shape[0] // 16 - 1)
    m.set_ridge(r)
    ev = SplitData(seq, vecs, "eval")
    x = ev.contexts()
    untrained = Predictor("g", lambda a: m.eval()(torch.from_numpy(a)).detach().numpy())
    assert np.allclose(untrained.predict(x), r.predict(x), atol=1e-5)
    # Trained: epoch 0 (= ridge) is validated too, so the kept model is never worse than ridge on
    # validation; the checkpoint round-trips with its ridge buffers.
    cfg["train"] |= {"delta_base": "ridge", "epochs": 3}
    res = train_memory_gru(seq, vecs, cfg, "cpu", progress=False)
    assert res.metrics["history"][0]["epoch"] == 0
    assert res.metrics["val_hit5"] >= res.metrics["history"][0]["val_hit5"]
    meta = save_checkpoint(tmp_path / "g.pt", res, "k")
    p = build_predictor(load_checkpoint(tmp_path / "g.pt", meta["sha256"]), "cpu")
    direct = build_predictor({"variant": "memory_gru", "config": res.config, "state": res.state}, "cpu")
    assert np.allclose(p.predict(x), direct.predict(x), atol=1e-6)
    with pytest.raises(ValueError, match="delta_base"):
        train_memory_gru(seq, vecs, {**cfg, "train": {**cfg["train"], "delta_base": "mean"}}, "cpu", False)


def test_ridge_base_is_fitted_on_what_the_gru_reads(small_cfg, chains_data):
    # Windows of up to 6 sentences, a GRU reading the last 3: its ridge base uses 3 sentences.
    vecs, ids, lanes = chains_data
    seq = make_sequences(ids, lanes, 6, 1, 0.3, 0.2, min_context=2)
    cfg = json.loads(json.dumps(small_cfg))
    cfg["train"] |= {"delta_base": "ridge", "context_lens": [3], "epochs": 1, "ridge_last_k": 4}
    res = train_memory_gru(seq, vecs, cfg, "cpu", progress=False)
    assert res.config["ridge_last_k"] == 3  # last_k 4 clipped to the 3 sentences read
    r3 = M.Ridge.from_state(fit_ridge(seq, vecs, cfg, 3).state)
    m = M.MemoryGRU(16, 32, 4, 0.0, ridge_last_k=3)
    m.set_ridge(r3)
    x = SplitData(seq, vecs, "eval").contexts(slice(0, 20))
    epoch0 = build_predictor(
        {"variant": "memory_gru", "config": res.config | {"context_len": 3}, "state": m.state_dict()}, "cpu"
    )
    assert np.allclose(epoch0.predict(x), r3.predict(x[:, -3:]), atol=1e-5)
