"""Settings from the environment and the YAML config (SPEC §1).

Environment: `DATA_SOURCE` (sim|local|prod), `SLA_MS` (default 150), `LENS_DATA_DIR`
(default ./data; or s3://bucket/prefix, see `objectstore`), `LENS_CONFIG` (a YAML file merged
over the packaged defaults), `LENS_ENDPOINTS`, `AUTH_TOKEN` (never logged), `LENS_FULL_GRIDS` (1 = full hero grids).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lens_core.common import objectstore
from lens_core.common.contracts import DATA_SOURCES

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "lens.yaml"


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
    bootstrap_b_min: int = 2000  # floor of the decision CIs' bootstrap B (SPEC §5)
    randomisation_b_min: int = 10000  # floor of the sign-flip randomisation B (SPEC §5)
    alpha: float = 0.05
    seed: int = 20260104
    env: str = "staging"

    @property
    def ci_b(self) -> int:
        """Bootstrap resamples for a decision's CI: `bootstrap_b`, at least `bootstrap_b_min`."""
        return max(self.bootstrap_b_min, self.bootstrap_b)

    @property
    def perm_b(self) -> int:
        """Sign-flip randomisations for a decision's p: `randomisation_b`, at least `randomisation_b_min`."""
        return max(self.randomisation_b_min, self.randomisation_b)


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateSpec(_Strict):
    """One SPEC §7 gate: its threshold, whether it blocks publication, who is paged."""

    threshold: int | float | None = None  # as written (0 stays 0: the gate table prints it)
    blocking: bool = True
    owner: str = ""


class PrimarySpec(_Strict):
    """A pack's headline comparison (the power and CI-width gates judge it)."""

    metric: str
    slice: str
    needed: float


class DeltaRule(_Strict):
    kind: Literal["delta"]
    metric: str
    slice: str
    min: float
    min_n: int = 0


class LatencyRule(_Strict):
    """score(metric) of the variant − the baseline's <= max_delta (or relative <= max_rel);
    `vs_baseline` is the same rule for a metric that is not a latency (e.g. file_credit)."""

    kind: Literal["latency", "vs_baseline"]
    metric: str
    max_delta: float | None = None
    max_rel: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> "LatencyRule":
        if (self.max_delta is None) == (self.max_rel is None):
            raise ValueError(f"latency rule on {self.metric}: set exactly one of max_delta, max_rel")
        return self


class ValueRule(_Strict):
    kind: Literal["value"]
    metric: str
    max: float


class UpshiftRule(_Strict):
    kind: Literal["upshift"]
    target: float
    tol: float


class DenseP95Rule(_Strict):
    kind: Literal["dense_p95"]


class MemoryRule(_Strict):
    kind: Literal["memory"]
    max_rel: float


class GateRule(_Strict):
    kind: Literal["gate"]
    gate: str


class QpsRule(_Strict):
    kind: Literal["qps"]
    min_rel: float


PromotionRule = Annotated[
    Union[DeltaRule, LatencyRule, ValueRule, UpshiftRule, DenseP95Rule, MemoryRule, GateRule, QpsRule],
    Field(discriminator="kind"),
]


class PackPromotion(_Strict):
    """SPEC §8 promotion rules of one pack, all vs the baseline."""

    primary: PrimarySpec
    rules: list[PromotionRule]


class SanitySpec(_Strict):
    queries: int = 30
    k: int = 10
    min_found: float = 0.9


class CalibrationSpec(_Strict):
    min_labels: int = 2000
    min_per_class: int = 5
    noise_reps: int = 1000
    slope_bounds: tuple[float, float] = (0.9, 1.1)
    drift_rate: float = 0.10
    # Is calibrated confidence part of what is released? true: the `ece` gate blocks publication
    # (as its `gates:` entry says); false: it warns with the same value and reason. A mapping
    # {source: bool} (sim / local / prod) decides per data source (issue 17).
    released: bool | dict[str, bool] = True


class StatsSpec(_Strict):
    min_n: int = 10


class CanarySpec(_Strict):
    """The `canary:` block. Only the keys are checked here; an unset key takes
    `lens_core.decide.canary.CanaryConfig`'s default (`canary_config()` passes the set ones)."""

    ladder: list[int] | None = None
    aa_pct: int | None = None
    window_queries: int | None = None
    window_minutes: float | None = None
    windows_per_step: int | None = None
    red_windows_to_revert: int | None = None
    min_test_queries: int | None = None
    calib_p99_ms: float | None = None
    ece_max: float | None = None
    ece_bins: int | None = None
    ece_noise_q: float | None = None
    ece_noise_reps: int | None = None
    conf_shift_max: float | None = None
    sla_delta_min: float | None = None
    sla_tolerance: str | None = None
    aa_z: float | None = None
    aa_min_windows: int | None = None
    aa_alpha: float | None = None
    aa_perm_b: int | None = None
    aa_sla_margin: float | None = None
    aa_calib_margin_ms: float | None = None
    aa_ndcg_margin: float | None = None
    window_sizing: str | None = None
    window_power: float | None = None
    seed: int | None = None


class LoadTestSpec(_Strict):
    """QPS@SLA (SPEC §8, issue 17): the baseline and every arm with a `qps` promotion rule are
    measured in ONE load test, their requests interleaved at each offered rate (each arm at that
    rate). An arm that sustains none of `rates` gets the grid extended downward (halving) down to
    `min_rate`, within its own time cap `max_extend_s`. `seed` orders the arms' requests (None: `run.seed`)."""

    queries: int = 200
    rates: tuple[float, ...] = (10, 20, 40, 80)
    duration_s: float = 2.5
    max_requests: int = 200
    max_total_s: float = 30
    min_rate: float = Field(default=1.25, gt=0)
    min_requests: int = Field(default=20, ge=1)
    max_extend_s: float = Field(default=45, gt=0)
    seed: int | None = None


class CollectSpec(_Strict):
    """How `local`/`prod` collect a week's raw runs (SPEC §2, issue 17). `interleave`: every
    system answers the same query close in time (blocks of `block` queries, the systems' order
    shuffled per block with `seed`; None: derived from `run.seed` and the run id), all
    (query, system) requests served by one shared pool of the client's concurrency. `window`:
    the most requests issued ahead of the oldest unfinished one (bounds the records buffered to
    keep each file in query order; 0: 64 x concurrency)."""

    interleave: bool = True
    block: int = Field(default=1, ge=1)
    seed: int | None = None
    window: int = Field(default=0, ge=0)


class MonitoringSpec(_Strict):
    micro_suite_size: int = 800


LABEL_POLICIES = ("explicit", "codesearchnet")


class JudgingSpec(_Strict):
    """How pool members get labels (SPEC §3, issue 16). `policy` per data source:
    `explicit` — only labels someone gave (human qrels, ground truth); `codesearchnet` — also
    every other pool member of a query that has ground truth is non-relevant (CodeSearchNet's
    rule, for suites whose ground truth is the one source span)."""

    policy: dict[str, Literal["explicit", "codesearchnet"]] = Field(
        default_factory=lambda: {"sim": "codesearchnet", "local": "codesearchnet", "prod": "explicit"}
    )
    grades: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    queue_cap_per_query: int = Field(default=20, ge=1)


class DeclaredSystem(_Strict):
    """One system a team declares (issue 17): what the evaluation queries and how."""

    name: str
    role: Literal["baseline", "aa", "candidate", "tail"]
    pack: str | None = None  # the hero pack of a candidate
    endpoint: str | None = None  # base URL; default: the first of LENS_ENDPOINTS
    params: dict[str, Union[str, int, float, bool]] = Field(default_factory=dict)  # sent with every /search
    cfg_hash: str | None = None  # what the engine must report, when it reports one
    repo: str | None = None  # the JSON shape's repo (default: the endpoint's host)
    path_prefix: str = ""  # prefixed to the JSON shape's file paths
    canary: bool = False  # also run through the canary ladder on its own

    @model_validator(mode="after")
    def _pack_for_candidates(self) -> "DeclaredSystem":
        if self.role == "candidate" and not self.pack:
            raise ValueError(f"system {self.name!r}: a candidate needs `pack` (the hero pack it competes in)")
        if self.role != "candidate" and self.pack:
            raise ValueError(f"system {self.name!r}: `pack` is for candidates (role is {self.role})")
        return self


class LensConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Declared systems (issue 17); None: the reference engine's, generated from baseline/packs/tail_taming
    systems: list[DeclaredSystem] | None = None
    baseline: dict[str, Any]
    packs: dict[str, PackSpec]
    tail_taming: dict[str, Any]
    run: RunSpec
    sim: SimSpec
    gates: dict[str, GateSpec] = Field(default_factory=dict)
    promotion: dict[str, PackPromotion] = Field(default_factory=dict)
    sanity: SanitySpec = Field(default_factory=SanitySpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    stats: StatsSpec = Field(default_factory=StatsSpec)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    load_test: LoadTestSpec = Field(default_factory=LoadTestSpec)
    collect: CollectSpec = Field(default_factory=CollectSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    judging: JudgingSpec = Field(default_factory=JudgingSpec)
    owners: dict[str, list[str]] = Field(default_factory=dict)
    # The per-query measures by registry name (issue 19): the contract's, plus extras that become
    # extra per-query columns. Names are resolved by `lens_core.measures.registry` (check_config).
    measures: list[str] = Field(default_factory=list)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@functools.lru_cache(maxsize=8)
def _load(path_override: str | None) -> LensConfig:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    over = None
    if path_override:
        p = Path(path_override)
        if not p.is_file():
            raise FileNotFoundError(f"LENS_CONFIG={path_override}: no such file")
        over = yaml.safe_load(p.read_text()) or {}
        data = _deep_merge(data, over)
    try:
        return LensConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(_config_error(err, path_override, over)) from None


def _config_error(err: ValidationError, path_override: str | None, over: Any) -> str:
    """One line per problem, each naming the key (dotted) and the file it came from."""
    lines = []
    for e in err.errors():
        raw = e.get("loc", ())
        # a promotion rule's location carries pydantic's union tag after its index: drop it
        loc = [x for i, x in enumerate(raw) if not (i >= 2 and raw[i - 2] == "rules" and isinstance(raw[i - 1], int))]
        key = ".".join(str(x) for x in loc) or "<top level>"
        node, in_override = over, path_override is not None
        for x in loc[:-1] if e.get("type") == "missing" else loc:  # a missing key: its parent
            if isinstance(node, dict) and x in node:
                node = node[x]
            elif isinstance(node, list) and isinstance(x, int) and x < len(node):
                node = node[x]
            else:
                in_override = False
                break
        where = f"LENS_CONFIG={path_override}" if in_override else str(DEFAULT_CONFIG)
        what = f"unknown key `{key}`" if e.get("type") == "extra_forbidden" else f"`{key}`: {e.get('msg')}"
        lines.append(f"{where}: {what}")
    return "invalid Lens config:\n  " + "\n  ".join(lines)


def load_config() -> LensConfig:
    return _load(os.environ.get("LENS_CONFIG") or None)


def config_key_source(loc: tuple) -> str:
    """Which file a config key (a location such as ("promotion", "pack", "rules", 2, "metric"))
    was read from: `LENS_CONFIG=<path>` when that file sets it, else the packaged config."""
    path = os.environ.get("LENS_CONFIG") or None
    node: Any = yaml.safe_load(Path(path).read_text()) if path and Path(path).is_file() else None
    for x in loc:
        if isinstance(node, dict) and x in node:
            node = node[x]
        elif isinstance(node, list) and isinstance(x, int) and x < len(node):
            node = node[x]
        else:
            node = None
            break
    return f"LENS_CONFIG={path}" if node is not None else str(DEFAULT_CONFIG)


def owners(role: str) -> list[str]:
    """The owners of a role (`eval`, `core`, ...) from the `owners:` block of the config."""
    known = load_config().owners
    if role not in known:
        raise KeyError(
            f"owner role {role!r} has no entry under `owners:` in the config "
            f"(known: {', '.join(sorted(known)) or 'none'})"
        )
    return list(known[role])


def data_dir() -> Path:
    """`LENS_DATA_DIR` (default ./data) as a local path. An `s3://bucket/prefix` URL is the system of
    record and this is its local working copy (`objectstore.work_dir_for`: `LENS_WORK_DIR`, else
    under ~/.cache/lens/work); artifacts are committed to the bucket at their commit points."""
    raw = os.environ.get("LENS_DATA_DIR", "./data")
    if objectstore.is_url(raw):
        return objectstore.work_dir_for(raw)
    return Path(raw).resolve()


def data_source() -> str:
    src = os.environ.get("DATA_SOURCE", "sim").strip().lower()
    if src not in DATA_SOURCES:
        raise ValueError(f"DATA_SOURCE={src!r}: expected one of {', '.join(DATA_SOURCES)}")
    return src


def env_number(name: str, kind: type = float, minimum: float | None = None, strict: bool = False, default=None):
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


def cache_dir() -> Path:
    """Content-addressed caches (embeddings, indexes): `$LENS_DATA_DIR/cache` unless
    `LENS_CACHE_DIR` is set (tests share one across temporary data dirs)."""
    override = os.environ.get("LENS_CACHE_DIR")
    return Path(override).resolve() if override else data_dir() / "cache"


def label_policy(source: str | None = None) -> str:
    """The labelling policy of a data source (config `judging.policy`, `explicit` if unset)."""
    return load_config().judging.policy.get(source or data_source(), "explicit")


def judgments_dir() -> Path:
    """Where `lens-eval judge import` puts human qrels; every weekly run reads them."""
    return data_dir() / "judgments"


def judging_dir(partition: str) -> Path:
    """Where a week's judging queue is exported (Parquet, Label Studio tasks and config)."""
    return data_dir() / "judging" / partition


def qrels_setting() -> str:
    """`LENS_QRELS`: human qrels files (TREC with line spans, or Parquet), comma-separated;
    a directory stands for the qrels files in it. The judgments dir is always read too."""
    return os.environ.get("LENS_QRELS", "").strip()
