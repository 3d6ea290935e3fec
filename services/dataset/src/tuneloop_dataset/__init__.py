"""tuneloop dataset service: upload, validate, report, split, version (port 8001)."""
