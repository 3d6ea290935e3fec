"""Canary releases of an alias (docs/flywheel.md, "Canary"): :mod:`.live` (the counts and
limits), :mod:`.traffic` (the request path), :mod:`.store` (the API's view, and the request
path's way to end one), :mod:`.service` (lifecycle and decisions). The rows are
:class:`..repository.CanaryRepository`'s."""

from .live import Arm, Live, Send, breach
from .service import CanaryService
from .store import canary_view

__all__ = ["Arm", "CanaryService", "Live", "Send", "breach", "canary_view"]
