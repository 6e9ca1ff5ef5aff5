"""lens_core.judge."""
