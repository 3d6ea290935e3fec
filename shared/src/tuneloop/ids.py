"""Ids: short prefixed strings, the only thing allowed in storage paths."""

from __future__ import annotations

import re
import secrets

from .errors import NotFound

_ID_RE = re.compile(r"^[a-z]{2,8}-[a-z0-9]{6,64}$")


def new_id(prefix: str, nbytes: int = 8) -> str:
    """A random id such as ``job-3f9a1c2b7d4e5f60``."""
    return f"{prefix}-{secrets.token_hex(nbytes)}"


def content_id(prefix: str, hexdigest: str, length: int = 16) -> str:
    """An id derived from a content hash (same content -> same id)."""
    return f"{prefix}-{hexdigest[:length]}"


def is_valid_id(value: str, prefix: str | None = None) -> bool:
    if not _ID_RE.match(value or ""):
        return False
    return prefix is None or value.startswith(prefix + "-")


def require_id(value: str, prefix: str, what: str) -> str:
    """Return ``value`` if it is a well-formed id, else raise a 404 in the envelope."""
    if not is_valid_id(value, prefix):
        raise NotFound(f"{what} '{value[:80]}' not found", code=f"{what}_not_found", param="id")
    return value
