"""lens_core.collect."""
