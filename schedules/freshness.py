"""Freshness policies on the published Lens assets, so a missed Sunday shows as stale.

Dagster 1.13's new-style `dagster.FreshnessPolicy.cron(deadline_cron, lower_bound_delta,
timezone)` (a `CronFreshnessPolicy`): each Sunday the asset must have materialised between
02:00 and the 09:00 deadline US/Eastern; a partition that did not is FAIL (stale) in the UI
until it materialises again.

The published assets live in `lens_assets`, so the policy is applied by mapping their specs:

    from schedules.freshness import apply_freshness
    defs = apply_freshness(dg.Definitions.merge(...))     # a Definitions, or
    lens_assets = apply_freshness(lens_assets)             # a list of AssetsDefinition / AssetSpec
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Sequence, TypeVar

import dagster as dg

from lens_core.monitor.monitoring import TZ

PUBLISHED_ASSETS: tuple[str, ...] = ("release_bundle", "release_verdict", "scores", "hero_table")
DEADLINE_CRON = "0 9 * * 0"  # Sunday 09:00 US/Eastern
LOWER_BOUND = timedelta(hours=7)  # ... for a run that started at 02:00

T = TypeVar("T")

# `Definitions.map_resolved_asset_specs` is a Dagster 1.13 preview: used knowingly, without its
# warning on every load of the code location (the terminal of `make demo`, every run process).
warnings.filterwarnings(
    "ignore",
    message="Function `Definitions.map_resolved_asset_specs` is currently in preview",
    category=dg.PreviewWarning,
)


def weekly_freshness_policy(
    deadline_cron: str = DEADLINE_CRON, lower_bound: timedelta = LOWER_BOUND, timezone: str = TZ
) -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.cron(deadline_cron=deadline_cron, lower_bound_delta=lower_bound, timezone=timezone)


def apply_freshness(obj: T, keys: Sequence[str] = PUBLISHED_ASSETS, policy: dg.FreshnessPolicy | None = None) -> T:
    """Attach the weekly freshness policy to the published assets in `obj` (a Definitions or a
    sequence of AssetsDefinition / AssetSpec); other assets are returned unchanged. An existing
    policy on one of those assets is replaced."""
    policy = policy or weekly_freshness_policy()
    wanted = {dg.AssetKey(k) for k in keys}

    def fn(spec: dg.AssetSpec) -> dg.AssetSpec:
        return dg.apply_freshness_policy(spec, policy) if spec.key in wanted else spec

    if isinstance(obj, dg.Definitions):
        return obj.map_resolved_asset_specs(func=fn)  # type: ignore[return-value]
    return list(dg.map_asset_specs(fn, obj))  # type: ignore[return-value]
