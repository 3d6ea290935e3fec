"""Thin routers of the dataset service."""
