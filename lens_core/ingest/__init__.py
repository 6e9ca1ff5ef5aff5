"""lens_core.ingest."""
