"""Thin routers: parse, call the service, shape the response."""
