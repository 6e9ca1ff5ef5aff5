"""Shared fixtures: every test gets its own LENS_DATA_DIR; caches are shared per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Content-addressed caches (embeddings, indexes) survive across tests and runs.
os.environ.setdefault("LENS_CACHE_DIR", str(REPO / ".cache" / "test"))


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("LENS_DATA_DIR", str(d))
    monkeypatch.delenv("DATA_SOURCE", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return d
