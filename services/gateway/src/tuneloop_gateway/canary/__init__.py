"""Canary releases of an alias (docs/flywheel.md, "Canary"): :mod:`.live` (the counts and
limits), :mod:`.traffic` (the request path), :mod:`.store` (the database), :mod:`.service`
(lifecycle and decisions)."""

from .live import Arm, Live, Send, breach
from .service import CanaryService
from .store import canary_view

__all__ = ["Arm", "CanaryService", "Live", "Send", "breach", "canary_view"]
