"""Routers: ``openai`` (the OpenAI-compatible surface) and ``admin`` (deployments, aliases)."""
