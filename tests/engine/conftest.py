"""Shared fixtures: a small corpus subset (whole packages, ~250 functions) and one engine per
session; caches under /work/main/.cache/test so embeddings are computed once per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("LENS_TEST_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "test"))
SMALL = 250


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="session")
def small_corpus(cache_dir):
    from lens_engine.corpus import build_corpus

    return build_corpus(max_functions=SMALL, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def suites(small_corpus):
    from lens_engine.suites import build_suites

    return build_suites(small_corpus)


@pytest.fixture(scope="session")
def engine(cache_dir):
    from lens_engine.engine import Engine, StragglerModel

    eng = Engine.load(cache_dir, max_functions=SMALL, straggler=StragglerModel(p=0.0), progress=False)
    yield eng
    eng.close()


@pytest.fixture()
def fresh_engine(engine):
    """A new engine over the same indexes: empty latency history, its own straggler model."""
    from lens_engine.engine import Engine, StragglerModel

    eng = Engine(engine.index, engine.corpus, cache_dir=engine.cache_dir, straggler=StragglerModel(p=0.0))
    eng._qvec = engine._qvec
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def base():
    from lens_core.common.systems import all_systems

    return all_systems()[0]
