"""Systems under evaluation: the baseline, the hero-pack variants and the tail-taming arm (SPEC §8).

A system is a named configuration of the engine knobs. Its `cfg_hash` is the first 16 hex of the
sha256 of the canonical JSON of its knobs (the name is not part of the hash, so two names of
the same configuration, e.g. an A/A pair, share a cfg_hash).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lens_core.common.hashing import canonical_json, sha256_hex
from lens_core.common.settings import LensConfig, load_config

KNOBS: tuple[str, ...] = (
    "phrase_boost",
    "window_tokens",
    "proximity_weight",
    "router_tau",
    "spend_cap_ms",
    "min_conf_gain",
    "ef_search",
    "refine_topk",
    "tail_hedge",
    "hedge_delay_ms",
    "ta_stop",
    "lts_stop",
)


# A name that becomes a path component (a system's raw-run file, the run's env folder): letters,
# digits and `_ . + -`, not starting with `.` or `-`, at most 128 characters. No separator, no
# `..`, nothing a shell or a URL would read differently.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


def check_safe_name(value: Any, what: str) -> str:
    """`value` if it is a path-safe identifier (`SAFE_NAME`); else one ValueError naming it."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {str(value)[:80]!r} is not a path-safe identifier: use letters, digits and "
            "`_ . + -` (no `/`, no `..`, not starting with `.` or `-`, at most 128 characters)"
        )
    return value


class SystemConfig(BaseModel):
    """One engine configuration. Field names are the SPEC §8 knobs; flags are the router's."""

    model_config = ConfigDict(frozen=True)

    name: str
    pack: str = Field("baseline", description="hero pack the variant belongs to, or 'baseline'")
    phrase_boost: float = 1.20
    window_tokens: int = 16
    proximity_weight: float = 0.8
    router_tau: float = 0.60
    spend_cap_ms: float = 5.0
    min_conf_gain: float = 0.04
    ef_search: int = 64
    refine_topk: int = 48
    tail_hedge: bool = False
    hedge_delay_ms: float = 6.0
    ta_stop: bool = False
    lts_stop: bool = False

    @field_validator("name")
    @classmethod
    def _path_safe(cls, v: str) -> str:
        return check_safe_name(v, "system name")

    def knobs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KNOBS}

    @property
    def cfg_hash(self) -> str:
        return cfg_hash(self.knobs())


def cfg_hash(knobs: dict[str, Any]) -> str:
    """First 16 hex of sha256 of the canonical JSON of a configuration (SPEC §8)."""
    normalised = {
        k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in knobs.items()
    }
    return sha256_hex(canonical_json(normalised).encode())[:16]


def _variant_name(pack: str, delta: dict[str, Any]) -> str:
    short = {
        "phrase_boost": "pb",
        "window_tokens": "w",
        "router_tau": "tau",
        "spend_cap_ms": "cap",
        "min_conf_gain": "mcg",
        "ef_search": "ef",
        "refine_topk": "rk",
    }
    parts = [
        f"{short.get(k, k)}{v:g}" if isinstance(v, float) else f"{short.get(k, k)}{v}" for k, v in sorted(delta.items())
    ]
    return f"{pack}__" + "_".join(parts)


def baseline(config: LensConfig | None = None) -> SystemConfig:
    config = config or load_config()
    return SystemConfig(pack="baseline", **config.baseline)


def pack_variants(pack: str, full_grid: bool, config: LensConfig | None = None) -> list[SystemConfig]:
    """The variants of one hero pack: the whole grid, or the demo subset from config."""
    config = config or load_config()
    spec = config.packs[pack]
    base = baseline(config).model_dump()
    if full_grid:
        keys = sorted(spec.grid)
        deltas = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))]
    else:
        deltas = [dict(d) for d in spec.demo]
    out = []
    for delta in deltas:
        unknown = set(delta) - set(KNOBS)
        if unknown:
            raise ValueError(f"pack {pack}: unknown knob(s) {sorted(unknown)} in config")
        fields = {**base, **delta, "name": _variant_name(pack, delta), "pack": pack}
        out.append(SystemConfig(**fields))
    return out


def tail_taming(config: LensConfig | None = None) -> SystemConfig:
    config = config or load_config()
    fields = {**baseline(config).model_dump(), **config.tail_taming, "pack": "tail_taming"}
    return SystemConfig(**fields)


def all_systems(
    full_grid: bool = False, config: LensConfig | None = None, include_tail: bool = True, include_aa: bool = True
) -> list[SystemConfig]:
    """Every system a weekly run evaluates, baseline first.

    `include_aa` adds `<baseline>__aa`, a second arm with the baseline's configuration: the
    A/A pair that gives the noise floor (SPEC §5).
    """
    config = config or load_config()
    base = baseline(config)
    systems = [base]
    if include_aa:
        systems.append(base.model_copy(update={"name": f"{base.name}__aa", "pack": "aa"}))
    for pack in config.packs:
        systems.extend(pack_variants(pack, full_grid, config))
    if include_tail:
        systems.append(tail_taming(config))
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate system names: {names}")
    return systems


def systems_by_name(systems: list[SystemConfig]) -> dict[str, SystemConfig]:
    return {s.name: s for s in systems}
