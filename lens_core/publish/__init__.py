"""lens_core.publish."""
