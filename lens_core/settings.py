"""Settings from the environment and the YAML config (SPEC §1).

Environment: `DATA_SOURCE` (sim|local|prod), `SLA_MS` (default 150), `LENS_DATA_DIR`
(default ./data), `LENS_CONFIG` (a YAML file merged over the packaged defaults),
`LENS_ENDPOINTS`, `AUTH_TOKEN` (never logged), `LENS_FULL_GRIDS` (1 = full hero grids).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from lens_core.contracts import DATA_SOURCES

DEFAULT_CONFIG = Path(__file__).with_name("config") / "lens.yaml"


class PackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: dict[str, list[Any]]
    demo: list[dict[str, Any]]


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sla_ms: float = 150
    k: int = 50
    pool_depth: int = 50
    bootstrap_b: int = 2000
    randomisation_b: int = 10000
    alpha: float = 0.05
    seed: int = 20260104
    env: str = "staging"


class SimSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    intent: str
    weight: float = 1.0


class SimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries_per_suite: int = 400
    suites: list[SimSuite]
    languages: list[str]
    repos: int = 24
    files_per_repo: int = 60
    shards: int = 8


class LensConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    baseline: dict[str, Any]
    packs: dict[str, PackSpec]
    tail_taming: dict[str, Any]
    run: RunSpec
    sim: SimSpec


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@functools.lru_cache(maxsize=8)
def _load(path_override: str | None) -> LensConfig:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if path_override:
        p = Path(path_override)
        if not p.is_file():
            raise FileNotFoundError(f"LENS_CONFIG={path_override}: no such file")
        data = _deep_merge(data, yaml.safe_load(p.read_text()) or {})
    return LensConfig.model_validate(data)


def load_config() -> LensConfig:
    return _load(os.environ.get("LENS_CONFIG") or None)


def data_dir() -> Path:
    return Path(os.environ.get("LENS_DATA_DIR", "./data")).resolve()


def data_source() -> str:
    src = os.environ.get("DATA_SOURCE", "sim").strip().lower()
    if src not in DATA_SOURCES:
        raise ValueError(f"DATA_SOURCE={src!r}: expected one of {', '.join(DATA_SOURCES)}")
    return src


def env_number(name: str, kind: type = float, minimum: float | None = None, strict: bool = False,
               default=None):
    """A numeric environment variable, or `default` when unset/empty.

    Refuses non-numbers and values below `minimum` (or equal to it with `strict`) with one
    error naming the variable and its value."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name}={raw!r}: must be {'>' if strict else '>='} {minimum:g}")
    return value


def sla_ms() -> float:
    value = env_number("SLA_MS", float, minimum=0, strict=True)
    return float(load_config().run.sla_ms) if value is None else value


def full_grids() -> bool:
    return os.environ.get("LENS_FULL_GRIDS", "0").strip().lower() in {"1", "true", "yes"}


def staging_dir(partition_key: str) -> Path:
    """Where the chain keeps one partition's tables before they are bundled:
    `$LENS_DATA_DIR/staging/<partition_key>/<asset>.parquet`."""
    return data_dir() / "staging" / partition_key


def cache_dir() -> Path:
    """Content-addressed caches (embeddings, indexes): `$LENS_DATA_DIR/cache` unless
    `LENS_CACHE_DIR` is set (tests share one across temporary data dirs)."""
    override = os.environ.get("LENS_CACHE_DIR")
    return Path(override).resolve() if override else data_dir() / "cache"
