"""Shared fixtures for the LVM tests: a fake (hash-seeded) embedder and synthetic chains."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lvm_core.settings import load_config


def fake_embed(texts, cache_dir=None, progress=False, batch_size=64, device=None):
    """Deterministic unit vectors from the text hash (no model): for plumbing tests."""
    out = np.empty((len(texts), 384), dtype=np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(384)
        out[i] = v / np.linalg.norm(v)
    return out


def rotation_chains(n_articles=60, length=14, dim=16, seed=0, noise=0.05):
    """Articles whose next vector is a fixed rotation of the current one (plus noise): a chain
    that copy-last cannot predict and a sequence model can learn."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    vecs, ids, lanes = [], [], []
    for a in range(n_articles):
        v = rng.standard_normal(dim)
        v /= np.linalg.norm(v)
        for _ in range(length):
            vecs.append(v.copy())
            ids.append(f"art{a:03d}")
            lanes.append(f"lane{a % 3}")
            v = q @ v + noise * rng.standard_normal(dim)
            v /= np.linalg.norm(v)
    return np.asarray(vecs, np.float32), np.asarray(ids), np.asarray(lanes)


@pytest.fixture
def chains_data():
    return rotation_chains()


@pytest.fixture
def fake_embedder():
    return fake_embed


@pytest.fixture
def small_cfg():
    return load_config(
        {
            "sequences": {"context_len": 4, "min_eval_candidates": 0, "eval_fraction": 0.3, "val_fraction": 0.2},
            "train": {
                "hidden": 32,
                "memory_slots": 4,
                "epochs": 12,
                "patience": 12,
                "batch_size": 64,
                "lr": 0.01,
                "negatives_per_query": 2,
                "soft_negatives": False,
            },
            "eval": {"bootstrap_b": 200, "latency_queries": 20},
        }
    )
