"""Systems under evaluation: declared in config, or generated for the reference engine (SPEC §8).

A system is what one arm of the evaluation queries: a name, a role (`baseline`, `aa` twin,
`candidate` of a hero pack, `tail` arm), the endpoint it is served from, the query parameters it
sends with every `/search`, and the `cfg_hash` the engine is expected to report (issue 17).

Two ways to say which systems a week evaluates:

* `systems:` in the config (a team's own engine): each entry is declared explicitly. Its
  project `cfg_hash` is the hash of its `params` (the name, endpoint and role are not part of
  it, so an A/A twin declared with its baseline's params shares its hash).
* no `systems:` (the reference engine, `lens_engine`): the declaration is generated from
  `baseline`, `packs` and `tail_taming`: each system is a named configuration of the engine
  knobs, and its `cfg_hash` is the hash of its knobs, which is what the reference engine reports.

`cfg_hash` is the first 16 hex of the sha256 of the canonical JSON of the configuration.
Optional knobs (`OPTIONAL_KNOBS`) enter the hash only when they differ from their default, so
adding a knob does not change the hash of any existing configuration.
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
# Knobs added after the first release: hashed only when they differ from their default (so every
# configuration that does not use them keeps its cfg_hash).
OPTIONAL_KNOBS: dict[str, Any] = {
    "struct_arm": True,
    "exact_def_weight": 0.5,
    "lex_drop_top": False,
}
ROLES: tuple[str, ...] = ("baseline", "aa", "candidate", "tail")
# `pack` of the systems whose role is not `candidate` (what decisions and gates key on)
ROLE_PACK = {"baseline": "baseline", "aa": "aa", "tail": "tail_taming"}


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
    struct_arm: bool = True
    exact_def_weight: float = 0.5
    lex_drop_top: bool = False
    # -- the declaration (issue 17); defaults describe a reference-engine system --------------
    endpoint: str | None = Field(None, description="base URL; None: the data source's default endpoint")
    params: dict[str, str] = Field(default_factory=dict, description="query parameters sent with every /search")
    expected_cfg_hash: str | None = Field(None, description="the cfg_hash the engine must report (None: not checked)")
    repo: str | None = Field(None, description="repo of the JSON shape's hits (default: the endpoint's host)")
    path_prefix: str = Field("", description="prefix of the JSON shape's file paths")
    canary: bool = Field(False, description="also run this system through the canary ladder on its own")
    declared: bool = Field(False, description="declared in `systems:` (params define it) rather than generated")

    @field_validator("name")
    @classmethod
    def _path_safe(cls, v: str) -> str:
        return check_safe_name(v, "system name")

    @property
    def role(self) -> str:
        return next((r for r, p in ROLE_PACK.items() if p == self.pack), "candidate")

    def knobs(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in KNOBS}
        out.update({k: getattr(self, k) for k, d in OPTIONAL_KNOBS.items() if getattr(self, k) != d})
        return out

    @property
    def cfg_hash(self) -> str:
        """The project's cfg_hash: of the declared params, or of the reference engine's knobs."""
        if self.declared:
            return cfg_hash({"params": dict(sorted(self.params.items()))})
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
    for entry in deltas:
        # a demo entry may also name the variant and ask for its own canary (issue 17: the
        # reference engine's planted improvement and regression)
        delta = {k: v for k, v in entry.items() if k not in ("name", "canary")}
        unknown = set(delta) - set(KNOBS) - set(OPTIONAL_KNOBS)
        if unknown:
            raise ValueError(f"pack {pack}: unknown knob(s) {sorted(unknown)} in config")
        name = entry.get("name") or _variant_name(pack, delta)
        fields = {**base, **delta, "name": name, "pack": pack, "canary": bool(entry.get("canary", False))}
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
    if config.systems is not None:
        return declared_systems(config, include_tail=include_tail, include_aa=include_aa)
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


def declared_systems(
    config: LensConfig | None = None, include_tail: bool = True, include_aa: bool = True
) -> list[SystemConfig]:
    """The systems of `systems:` in the config, baseline first (issue 17)."""
    config = config or load_config()
    decl = config.systems or []
    out: list[SystemConfig] = []
    for d in decl:
        if d.role == "tail" and not include_tail or d.role == "aa" and not include_aa:
            continue
        pack = d.pack if d.role == "candidate" else ROLE_PACK[d.role]
        out.append(
            SystemConfig(
                name=d.name,
                pack=pack,
                endpoint=d.endpoint,
                params={str(k): str(v) for k, v in d.params.items()},
                expected_cfg_hash=d.cfg_hash,
                repo=d.repo,
                path_prefix=d.path_prefix,
                canary=d.canary,
                declared=True,
            )
        )
    bases = [s for s in out if s.role == "baseline"]
    if len(bases) != 1:
        raise ValueError(f"systems: exactly one system must have role baseline (found {len(bases)})")
    if sum(s.role == "aa" for s in out) > 1:
        raise ValueError("systems: at most one system may have role aa (the A/A twin)")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"systems: duplicate system names: {names}")
    return [bases[0]] + [s for s in out if s.role != "baseline"]


def engine_systems(config: LensConfig | None = None) -> list[SystemConfig]:
    """Every configuration the reference engine serves: the full grids and the demo entries
    (which may name variants outside the grid, e.g. the planted ones)."""
    config = config or load_config()
    out: dict[str, SystemConfig] = {}
    for full in (True, False):
        for s in all_systems(full_grid=full, config=config.model_copy(update={"systems": None})):
            out.setdefault(s.name, s)
    return list(out.values())


def systems_by_name(systems: list[SystemConfig]) -> dict[str, SystemConfig]:
    return {s.name: s for s in systems}
