"""What the gateway's worker processes on one host share (``GATEWAY_WORKERS`` > 1).

One file in the supervisor's run directory, mapped into every worker:

- the per-key **token buckets** of the rate limit, so N workers enforce one limit per key (with
  a bucket per process a client spreading its connections over 4 workers got 4x its limit, and
  one holding a single connection hit one worker's bucket only);
- a **key epoch**, bumped when a key is created, revoked or changed, so a revocation on one
  worker empties every worker's key cache at its next request instead of after
  ``GATEWAY_KEY_CACHE_TTL_S``.

Each operation takes an exclusive ``flock`` on the file for a few microseconds (plus a thread
lock: ``flock`` does not exclude threads sharing one open file). Buckets live in an open-
addressed table of ``slots`` entries; when the keys probed are all taken, the bucket idle the
longest is reused (a bucket idle for a minute is full again anyway).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

_HEADER = struct.Struct("<q")  # key epoch
_HEADER_SIZE = 64
_SLOT = struct.Struct("<qdd")  # key digest (never 0), tokens, last refill (monotonic seconds)
_PROBES = 32


def _digest(key_id: str) -> int:
    value = int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "little",
                           signed=True)
    return value or 1


def take_token(tokens: float, last: float, now: float, rpm: int) -> tuple[float, float]:
    """One step of a token bucket (capacity ``rpm``, refilled at rpm/60 per second) that held
    ``tokens`` at ``last``: ``(tokens left now, wait)``, wait 0 when a token was taken, else
    the seconds until one is available."""
    rate = rpm / 60.0
    tokens = min(float(rpm), tokens + max(0.0, now - last) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class HostShare:
    """Rate-limit buckets and the key epoch shared by the workers of one gateway."""

    def __init__(self, path: Path, slots: int = 4096) -> None:
        self.slots = max(_PROBES, slots)
        self.size = _HEADER_SIZE + self.slots * _SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        with self._locked():
            if os.fstat(self._fd).st_size < self.size:  # the first worker sizes it (zeros)
                os.ftruncate(self._fd, self.size)
        self._map = mmap.mmap(self._fd, self.size)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def check(self, key_id: str, rpm: int) -> float:
        """Take one token from ``key_id``'s bucket (capacity ``rpm``, refilled at rpm/60 per
        second); 0 when allowed, else the seconds until a token is available. The same contract
        as :class:`.auth.RateLimiter`, across processes."""
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the host
        digest = _digest(key_id)
        with self._locked():
            offset = self._slot(digest, now)
            found, tokens, last = _SLOT.unpack_from(self._map, offset)
            if found != digest:
                tokens, last = float(rpm), now
            tokens, wait = take_token(tokens, last, now, rpm)
            _SLOT.pack_into(self._map, offset, digest, tokens, now)
            return wait

    def _slot(self, digest: int, now: float) -> int:
        """The offset of ``digest``'s slot: its own, else the first free one probed, else the
        probed one idle the longest."""
        start = digest % self.slots
        oldest, oldest_at = -1, now + 1
        for i in range(_PROBES):
            offset = _HEADER_SIZE + ((start + i) % self.slots) * _SLOT.size
            found, _tokens, last = _SLOT.unpack_from(self._map, offset)
            if found == digest or found == 0:
                return offset
            if last < oldest_at:
                oldest, oldest_at = offset, last
        return oldest

    def epoch(self) -> int:
        """The key epoch (read without the lock: an aligned 8-byte read)."""
        return _HEADER.unpack_from(self._map, 0)[0]

    def bump(self) -> None:
        """A key changed: every worker's key cache is emptied at its next look-up."""
        with self._locked():
            _HEADER.pack_into(self._map, 0, self.epoch() + 1)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
