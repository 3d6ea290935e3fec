"""tuneloop gateway: the one public entry (keys, routing, evaluation, gated promotion; port 8000)."""
