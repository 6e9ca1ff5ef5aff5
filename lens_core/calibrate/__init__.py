"""lens_core.calibrate."""
