"""Evaluation engine: run targets concurrently, score outputs, build the report."""
