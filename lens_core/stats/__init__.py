"""lens_core.stats."""
