"""API keys (stored hashed), scopes, per-key rate limits, and the first-start admin key.

Keys are 256-bit random strings (``tlk-...``); only their SHA-256 is stored, which is enough for
high-entropy secrets (no slow KDF needed; the same choice as GitHub/Stripe tokens). Two scopes:
``inference`` (chat, completions, models) and ``admin`` (everything; implies inference).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from tuneloop.db import Database
from tuneloop.errors import Forbidden, InvalidRequest, RateLimited, Unauthorized
from tuneloop.ids import new_id
from tuneloop.offload import offload
from tuneloop.workers import host_lock

from .db import ApiKey
from .hostshare import HostShare, take_token
from .repository.keys import KeyRepository
from .settings import GatewaySettings

log = logging.getLogger("tuneloop.gateway.auth")

SCOPES = ("inference", "admin")
KEY_PREFIX = "tlk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name, scopes and rate limit."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    rate_limit_rpm: int | None
    capture: bool = False  # opted in to traffic capture (the alias must be opted in too)
    models: frozenset[str] | None = None  # bound to these served names/aliases; None: any

    def may_call(self, model: object) -> bool:
        """Whether this key may generate with ``model`` (a key bound to A cannot call B)."""
        return self.models is None or model in self.models

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def key_view(row: ApiKey) -> dict:
    return {"id": row.id, "object": "api_key", "name": row.name, "prefix": row.prefix,
            "scopes": list(row.scopes), "rate_limit_rpm": row.rate_limit_rpm,
            "capture": bool(row.capture), "models": row.models, "created_at": row.created_at,
            "revoked_at": row.revoked_at}


class KeyStore:
    """Create, list, revoke and verify keys (stored through :class:`.repository.KeyRepository`).

    Valid keys are cached for ``ttl`` seconds in a bounded LRU (``size`` entries: the least
    recently used valid key leaves first, never all at once). Unknown keys are remembered
    apart, in a small LRU of their own (``miss_size``), so a flood of made-up keys cycles
    through that one and cannot push a single valid key out of the other; creating a key
    forgets its miss, revoking one forgets its entry (not the whole cache). The caches live on
    the event loop (only the database look-up leaves it), so they need no lock. With several
    worker processes (``shared``), a key created, revoked or changed on one bumps the host's key
    epoch and every worker empties its caches at its next look-up."""

    def __init__(self, db: Database, ttl: float = 30.0, size: int = 10_000,
                 miss_size: int = 1024, shared: HostShare | None = None) -> None:
        self.repo = KeyRepository(db)
        self.shared = shared
        self._epoch = shared.epoch() if shared is not None else 0
        self.ttl = ttl
        self.size = max(1, size)
        self.miss_size = max(0, miss_size)
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()
        #: digest -> the one database look-up in flight for it
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}

    async def create(self, name: str, scopes: list[str], rate_limit_rpm: int | None = None,
                     key: str | None = None, capture: bool = False,
                     models: list[str] | None = None) -> tuple[str, dict]:
        """Store a new key (generated unless given) and return ``(key, view)``."""
        bad = [s for s in scopes if s not in SCOPES]
        if not scopes or bad:
            raise InvalidRequest(f"scopes must be a non-empty subset of {list(SCOPES)}",
                                 code="invalid_scope", param="scopes")
        if rate_limit_rpm is not None and rate_limit_rpm < 1:
            raise InvalidRequest("rate_limit_rpm must be >= 1", param="rate_limit_rpm")
        key = key or generate_key()
        if len(key) < 20:
            raise InvalidRequest("keys must be at least 20 characters", code="key_too_short")
        row = await self.repo.add(ApiKey(
            id=new_id("key"), name=name[:200], prefix=key[:12], key_hash=hash_key(key),
            scopes=sorted(set(scopes)), rate_limit_rpm=rate_limit_rpm, created_at=int(time.time()),
            revoked_at=None, capture=capture,
            models=sorted(set(models)) if models is not None else None))
        self._misses.pop(row.key_hash, None)
        self._changed()
        return key, key_view(row)

    async def list(self, include_revoked: bool = False) -> list[dict]:
        return [key_view(r) for r in await self.repo.list(include_revoked)]

    async def revoke(self, key_id: str) -> dict:
        row = await self.repo.revoke(key_id)
        self._cache.pop(row.key_hash, None)
        self._changed()
        return key_view(row)

    async def set_capture(self, key_id: str, capture: bool | None = None,
                          models: builtins.list[str] | None = None, unbind: bool = False) -> dict:
        """Opt a key in to (or out of) traffic capture, bind it to ``models`` (or ``unbind`` it:
        any model again); its cached entry is forgotten."""
        row = await self.repo.update(key_id, capture, models, unbind)
        self._cache.pop(row.key_hash, None)
        self._changed()
        return key_view(row)

    def _changed(self) -> None:
        if self.shared is not None:
            self.shared.bump()

    async def count(self) -> int:
        return await self.repo.count()

    def cached(self, key: str) -> tuple[bool, Principal | None]:
        """``(hit, principal)`` from the caches only (no I/O: safe on the event loop)."""
        if self.shared is not None and (epoch := self.shared.epoch()) != self._epoch:
            self._epoch = epoch  # a key changed on another worker of this host
            self._cache.clear()
            self._misses.clear()
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit and hit[0] > now:
            self._cache.move_to_end(digest)
            return True, hit[1]
        miss = self._misses.get(digest)
        if miss and miss > now:
            return True, None
        return False, None

    async def verify(self, key: str) -> Principal | None:
        """The principal for ``key``, or None if unknown or revoked: from memory when cached
        (no thread hop, no database), else one database look-up per key however many requests
        wait for it. A burst of requests with a key that is not cached (the first after
        start-up, or after its entry expired) sent every one of them to the database: 2,692
        look-ups for 2,834 requests in a 1,024-concurrent round of bench/serve_load.py."""
        hit, principal = self.cached(key)
        if hit:
            return principal
        digest = hash_key(key)
        flight = self._inflight.get(digest)
        if flight is None:
            flight = asyncio.ensure_future(self._look_up(digest))
            self._inflight[digest] = flight
            flight.add_done_callback(lambda _f: self._inflight.pop(digest, None))
        # shielded: a waiter that goes away (client disconnect) does not cancel the others'
        return await asyncio.shield(flight)

    async def _look_up(self, digest: str) -> Principal | None:
        """The database's answer for ``digest``, remembered (a valid key for ``ttl``, a miss
        briefly: a key created on another replica works soon)."""
        row = await self.repo.by_hash(digest)
        principal = None
        if row is not None and row.revoked_at is None:
            principal = Principal(row.id, row.name, tuple(row.scopes), row.rate_limit_rpm,
                                  bool(row.capture),
                                  frozenset(row.models) if row.models is not None else None)
        now = time.monotonic()
        if principal is None:
            if self.miss_size:
                self._misses[digest] = now + min(self.ttl, 5.0)
                self._misses.move_to_end(digest)
                while len(self._misses) > self.miss_size:
                    self._misses.popitem(last=False)
        else:
            self._cache[digest] = (now + self.ttl, principal)
            self._cache.move_to_end(digest)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return principal


class RateLimiter:
    """Token bucket per key: capacity = rpm, refilled at rpm/60 per second (per process; the
    workers of one gateway share theirs through :class:`.hostshare.HostShare`)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, rpm: int) -> float:
        """Take one token; return 0 if allowed, else seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(rpm), now))
            tokens, wait = take_token(tokens, last, now, rpm)
            self._buckets[key_id] = (tokens, now)
            return wait


async def bootstrap_admin_key(keys: KeyStore, settings: GatewaySettings) -> str | None:
    """On first start (no key at all) install an admin key instead of running open.

    Uses ``GATEWAY_BOOTSTRAP_ADMIN_KEY`` when set; otherwise generates one, prints it once and
    writes it (mode 0600) to ``admin_key_file``. Returns the generated key, if any.
    """
    with host_lock("bootstrap-admin-key"):  # several workers start at once: one installs it
        return await _bootstrap_admin_key(keys, settings)


async def _bootstrap_admin_key(keys: KeyStore, settings: GatewaySettings) -> str | None:
    if await keys.count() > 0:
        return None
    if settings.bootstrap_admin_key:
        await keys.create("bootstrap-admin", ["admin"], key=settings.bootstrap_admin_key)
        log.info("installed the admin key from GATEWAY_BOOTSTRAP_ADMIN_KEY")
        return None
    key, view = await keys.create("bootstrap-admin", ["admin"])
    path = await offload(_write_key_file, settings, key)
    print(f"tuneloop gateway: generated the first admin API key (shown once): {key}\n"
          f"  also written to {path}", flush=True)
    log.warning("generated first admin key", extra={"key_id": view["id"], "file": str(path)})
    return key


def _write_key_file(settings: GatewaySettings, key: str) -> Path:
    path = admin_key_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return path


def admin_key_path(settings: GatewaySettings) -> Path:
    return Path(settings.admin_key_file or (settings.data_dir / "gateway-admin-key")).resolve()


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


async def authenticate(request: Request, scope: str) -> Principal:
    """Verify the caller's key, its scope and its rate limit (raises 401/403/429).

    A key seen in the last ``key_cache_ttl_s`` is checked from memory on the event loop; only
    a cache miss goes to the database (in a worker thread, once for concurrent requests)."""
    state = request.app.state
    token = bearer(request)
    if not token:
        state.gw_metrics.auth_failures.labels("missing").inc()
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                           code="missing_api_key")
    principal = await state.keys.verify(token)
    if principal is None:
        state.gw_metrics.auth_failures.labels("invalid").inc()
        raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
    if not principal.allows(scope):
        state.gw_metrics.auth_failures.labels("scope").inc()
        raise Forbidden(f"this key lacks the '{scope}' scope (has: {', '.join(principal.scopes)})",
                        code="insufficient_scope")
    rpm = principal.rate_limit_rpm or state.settings.default_rate_limit_rpm
    wait = state.limiter.check(principal.key_id, rpm)
    if wait > 0:
        state.gw_metrics.rate_limited.inc()
        exc = RateLimited(f"rate limit of {rpm} requests/minute exceeded; retry in {wait:.1f}s",
                          details={"retry_after_s": round(wait, 2), "limit_rpm": rpm})
        raise exc
    request.state.principal = principal
    return principal


async def require_inference(request: Request) -> Principal:
    """FastAPI dependency: any valid key with the inference (or admin) scope."""
    return await authenticate(request, "inference")


async def require_admin(request: Request) -> Principal:
    """FastAPI dependency: a valid key with the admin scope."""
    return await authenticate(request, "admin")
