"""lens_core.monitor."""
