"""The gateway's key cache under a flood of made-up keys (issue 15), on a real database.

Before: misses were cached in the same dict as valid keys and the dict was cleared wholesale
at 10,000 entries, so a flood of bogus keys sent every valid key back to the database, and a
key tried before it was created stayed "invalid" for the cache TTL."""

from __future__ import annotations

import asyncio

from tuneloop.db import Database
from tuneloop_gateway.app import MIGRATIONS
from tuneloop_gateway.auth import KeyStore, hash_key


def _store(tmp_path, **kw) -> KeyStore:
    db = Database(f"sqlite:///{tmp_path / 'gw.db'}")
    db.migrate(MIGRATIONS, version_table="alembic_version_gateway")
    return KeyStore(db, ttl=60, **kw)


def test_flood_of_bogus_keys_does_not_evict_valid_keys(tmp_path):
    keys = _store(tmp_path)

    async def run() -> None:
        valid = [(await keys.create(f"k{i}", ["inference"]))[0] for i in range(3)]
        for k in valid:
            assert await keys.verify(k) is not None
        for i in range(12_000):  # more than the old wholesale-clear threshold (10,000)
            assert await keys.verify(f"tlk-bogus-{i:06d}-0123456789abcdef") is None
        for k in valid:
            hit, principal = keys.cached(k)
            assert hit and principal is not None, "a valid key was evicted by bogus ones"
    asyncio.run(run())
    assert len(keys._misses) <= keys.miss_size


def test_cache_is_a_bounded_lru_of_valid_keys(tmp_path):
    keys = _store(tmp_path, size=3)

    async def run() -> list[str]:
        made = [(await keys.create(f"k{i}", ["inference"]))[0] for i in range(4)]
        for k in made[:3]:
            await keys.verify(k)
        await keys.verify(made[0])     # most recently used now
        await keys.verify(made[3])     # evicts the least recently used one (made[1]) only
        return made
    made = asyncio.run(run())
    assert keys.cached(made[0])[0] and keys.cached(made[2])[0] and keys.cached(made[3])[0]
    assert not keys.cached(made[1])[0]


def test_key_tried_before_it_exists_works_once_created_and_revocation_is_per_key(tmp_path):
    keys = _store(tmp_path)
    key = "tlk-created-later-0123456789abcdef"

    async def run() -> None:
        assert await keys.verify(key) is None        # tried first: a miss
        await keys.create("later", ["inference"], key=key)
        assert await keys.verify(key) is not None    # the miss is forgotten on creation
        other, view = await keys.create("other", ["admin"])
        assert await keys.verify(other) is not None
        _, gone = await keys.create("gone", ["inference"])
        await keys.revoke(gone["id"])
        assert keys.cached(key)[0] and keys.cached(other)[0]  # revoking one keeps the others
        await keys.revoke(view["id"])
        assert await keys.verify(other) is None
    asyncio.run(run())


def test_a_cache_hit_leaves_the_event_loop_alone(tmp_path):
    """The look-up on every request: a cached key is answered without a thread hop or the
    database (the repository is not called; the coroutine finishes without suspending)."""
    keys = _store(tmp_path)
    key, _ = asyncio.run(keys.create("hot", ["inference"]))
    assert asyncio.run(keys.verify(key)) is not None     # the miss that fills the cache
    calls: list[str] = []
    by_hash = keys.repo.by_hash

    async def counted(digest: str):
        calls.append(digest)
        return await by_hash(digest)

    keys.repo.by_hash = counted
    step = keys.verify(key).__await__()
    try:
        next(step)
    except StopIteration as done:  # finished at the first step: it never waited for anything
        assert done.value is not None and done.value.name == "hot"
    else:
        raise AssertionError("a cache hit suspended (a thread hop or I/O)")
    assert calls == []


def test_a_burst_with_an_uncached_key_reads_the_database_once(tmp_path):
    """1,024 concurrent requests with a key not in the cache (the first round after start-up,
    or after the entry expired) waited for 1,024 database look-ups in the thread pool: now the
    first look-up answers them all. A waiter cancelled mid-way (a client that went away) does
    not cancel the others'."""
    keys = _store(tmp_path)
    key, view = asyncio.run(keys.create("burst", ["inference"]))
    bogus = "tlk-never-created-0123456789abcdef"
    lookups: list[str] = []
    by_hash = keys.repo.by_hash

    async def counted(digest: str):
        lookups.append(digest)
        return await by_hash(digest)

    keys.repo.by_hash = counted  # the real look-up, counted

    async def burst():
        waiters = [asyncio.ensure_future(keys.verify(key)) for _ in range(1024)]
        waiters += [asyncio.ensure_future(keys.verify(bogus)) for _ in range(64)]
        await asyncio.sleep(0)
        waiters[0].cancel()
        return await asyncio.gather(*waiters[1:])

    got = asyncio.run(burst())
    assert [p.key_id for p in got[:1023]] == [view["id"]] * 1023
    assert got[1023:] == [None] * 64
    assert sorted(lookups) == sorted([hash_key(key), hash_key(bogus)]), lookups
    assert not keys._inflight
