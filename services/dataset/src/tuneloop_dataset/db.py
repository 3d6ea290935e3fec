"""Dataset service tables (owned by this service only)."""

from __future__ import annotations

from tuneloop.db import make_base

Base = make_base()
