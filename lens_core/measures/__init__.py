"""lens_core.measures."""
