"""The ``tuneloop`` command: everything a user does, over the gateway API.

Talks to ``TUNELOOP_URL`` (default http://127.0.0.1:8000) with ``TUNELOOP_API_KEY`` (default:
the admin key the embedded gateway writes to ``$TUNELOOP_DATA_DIR/gateway-admin-key``).
"""

from .main import app

__all__ = ["app"]
