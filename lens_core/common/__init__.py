"""lens_core.common."""
