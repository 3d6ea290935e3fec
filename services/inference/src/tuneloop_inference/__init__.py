"""tuneloop inference service: OpenAI-compatible proxy over real engines, hot-swap, aliases (port 8003)."""
