"""lens_core.sim."""
