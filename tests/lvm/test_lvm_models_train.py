import json

import numpy as np
import pytest
import torch

from lvm_core import models as M
from lvm_core.sequences import make_sequences
from lvm_core.train import (
    CheckpointError,
    Predictor,
    SplitData,
    build_predictor,
    checkpoint_key,
    ensure_checkpoint,
    fit_ridge,
    load_checkpoint,
    save_checkpoint,
    train_memory_gru,
    train_variant,
)


@pytest.fixture
def chains(small_cfg, chains_data):
    vecs, ids, lanes = chains_data
    s = small_cfg["sequences"]
    seq = make_sequences(ids, lanes, s["context_len"], 1, s["eval_fraction"], s["val_fraction"])
    return vecs, seq


def test_gru_starts_as_copy_last_and_outputs_unit_vectors():
    m = M.MemoryGRU(dim=16, hidden=8, memory_slots=4).eval()
    x = torch.nn.functional.normalize(torch.randn(5, 3, 16), dim=-1)
    y = m(x)
    assert torch.allclose(y, x[:, -1], atol=1e-6)
    assert torch.allclose(y.norm(dim=-1), torch.ones(5))


def test_loss_terms():
    t = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    perfect = M.lvm_loss(t, t, alpha=0.0)
    assert float(perfect) == pytest.approx(0.0, abs=1e-6)
    assert float(M.lvm_loss(-t, t, alpha=0.0)) > 1.0
    neg = torch.nn.functional.normalize(torch.randn(8, 3, 16), dim=-1)
    mask = torch.ones(8, 3, dtype=torch.bool)
    with_neg = M.lvm_loss(t, t, 1.0, 0.07, neg, mask)
    assert torch.isfinite(with_neg) and float(with_neg) >= float(perfect)


def test_mine_negatives_respects_range_and_lane():
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(200, 8), dim=-1)
    rows = torch.arange(200)
    lanes = rows % 2
    tgt = bank[:4]
    neg, mask = M.mine_negatives(tgt, rows[:4], lanes[:4], bank, rows, lanes, 0.2, 0.8, 3, True, g)
    sims = torch.einsum("bd,bkd->bk", tgt, neg)
    assert ((sims >= 0.2 - 1e-6) & (sims <= 0.8 + 1e-6))[mask].all()


def test_gru_beats_copy_last_on_synthetic_chain(chains, small_cfg):
    vecs, seq = chains
    res = train_memory_gru(seq, vecs, small_cfg, "cpu", progress=False)
    gru = build_predictor({"variant": "memory_gru", "config": res.config, "state": res.state}, "cpu")
    ev = SplitData(seq, vecs, "eval")
    gru_h1 = ev.hit_rate(gru, k=1)
    copy_h1 = ev.hit_rate(Predictor("copy_last", M.copy_last), k=1)
    assert res.metrics["best_epoch"] >= 1 and res.metrics["val_hit5"] > 0
    assert gru_h1 > copy_h1 + 0.2, (gru_h1, copy_h1)


def test_ridge_learns_the_rotation(chains, small_cfg):
    vecs, seq = chains
    res = fit_ridge(seq, vecs, small_cfg)
    ev = SplitData(seq, vecs, "eval")
    ridge = build_predictor({"variant": "ridge", "config": res.config, "state": res.state})
    assert ev.hit_rate(ridge, k=1) > 0.8
    assert ev.hit_rate(Predictor("copy_last", M.copy_last), k=1) < 0.3


def test_checkpoint_round_trip_and_sha_mismatch(tmp_path, chains, small_cfg):
    vecs, seq = chains
    res = train_variant("ridge", seq, vecs, small_cfg)
    path = tmp_path / "ck" / "ridge.pt"
    meta = save_checkpoint(path, res, "key")
    side = json.loads((tmp_path / "ck" / "ridge.pt.json").read_text())
    assert side["sha256"] == meta["sha256"] and len(meta["sha256"]) == 64
    ck = load_checkpoint(path)
    assert ck["variant"] == "ridge" and ck["sha256"] == meta["sha256"]
    x = SplitData(seq, vecs, "eval").contexts()
    p1 = build_predictor(ck).predict(x)
    p0 = M.Ridge.from_state(res.state).predict(x)
    assert np.allclose(p0, p1)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path, "0" * 64)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_gru_checkpoint_round_trip(tmp_path, chains, small_cfg):
    vecs, seq = chains
    cfg = {**small_cfg, "train": {**small_cfg["train"], "epochs": 1}}
    res = train_memory_gru(seq, vecs, cfg, "cpu", progress=False)
    meta = save_checkpoint(tmp_path / "g.pt", res, "k")
    ck = load_checkpoint(tmp_path / "g.pt", meta["sha256"])
    x = SplitData(seq, vecs, "val").contexts()
    a = build_predictor({"variant": "memory_gru", "config": res.config, "state": res.state}, "cpu")
    assert np.allclose(a.predict(x), build_predictor(ck, "cpu").predict(x), atol=1e-6)


def test_ensure_checkpoint_reuses_same_key(tmp_path, chains, small_cfg):
    vecs, seq = chains
    first = ensure_checkpoint("mean_context", tmp_path, seq, vecs, "datahash", small_cfg)
    again = ensure_checkpoint("mean_context", tmp_path, seq, vecs, "datahash", small_cfg)
    assert not first["reused"] and again["reused"] and again["sha256"] == first["sha256"]
    other = ensure_checkpoint("mean_context", tmp_path, seq, vecs, "otherdata", small_cfg)
    assert not other["reused"]
    assert checkpoint_key("ridge", "d", small_cfg) != checkpoint_key("ridge", "e", small_cfg)
