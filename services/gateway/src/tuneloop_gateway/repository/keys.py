"""API keys in the database (``gateway_api_keys``): stored by hash, listed, revoked, changed,
looked up by hash. The caches in front of the look-up are :class:`..auth.KeyStore`'s."""

from __future__ import annotations

import builtins
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.errors import InvalidRequest, NotFound
from tuneloop.offload import offloaded

from ..db import ApiKey


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    @offloaded
    def add(self, row: ApiKey) -> ApiKey:
        """Store a new key; refused (``key_exists``) when its hash is stored already."""
        with self.db.session() as s:
            if s.scalar(select(ApiKey).where(ApiKey.key_hash == row.key_hash)) is not None:
                raise InvalidRequest("this key already exists", code="key_exists")
            s.add(row)
        return row

    @offloaded
    def list(self, include_revoked: bool = False) -> builtins.list[ApiKey]:
        """Keys, oldest first (revoked ones only when asked)."""
        with self.db.session() as s:
            q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
            if not include_revoked:
                q = q.where(ApiKey.revoked_at.is_(None))
            return list(s.scalars(q))

    @offloaded
    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (once: a revoked key keeps its first ``revoked_at``)."""
        with self.db.session() as s:
            row = _key(s, key_id)
            if row.revoked_at is None:
                row.revoked_at = int(time.time())
            return row

    @offloaded
    def update(self, key_id: str, capture: bool | None, models: builtins.list[str] | None,
               unbind: bool) -> ApiKey:
        """Change an active key's capture opt-in and the models it is bound to (``unbind``:
        any model again)."""
        with self.db.session() as s:
            row = _key(s, key_id)
            if row.revoked_at is not None:
                raise _not_found(key_id)
            if capture is not None:
                row.capture = capture
            if models is not None or unbind:
                row.models = None if unbind else sorted(set(models or []))
            return row

    @offloaded
    def count(self) -> int:
        """Every key, revoked ones included."""
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(ApiKey)) or 0

    @offloaded
    def by_hash(self, digest: str) -> ApiKey | None:
        """The key whose SHA-256 is ``digest`` (revoked or not), or None."""
        with self.db.session() as s:
            return s.scalar(select(ApiKey).where(ApiKey.key_hash == digest))


def _key(s: Session, key_id: str) -> ApiKey:
    row = s.get(ApiKey, key_id)
    if row is None:
        raise _not_found(key_id)
    return row


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"api key '{key_id[:80]}' not found", code="api_key_not_found")
