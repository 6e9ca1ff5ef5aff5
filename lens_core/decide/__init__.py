"""lens_core.decide."""
