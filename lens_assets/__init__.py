"""The Lens evaluation chain: assets, jobs and resources of the `lens` group."""

from lens_assets.definitions import defs, weekly_lens_job

__all__ = ["defs", "weekly_lens_job"]
