"""Work leases: which gateway process runs an evaluation or a gate, and whether it still does.

The gateway runs as several replicas (two on Kubernetes) on one database. Each replica's
reconcile loop lists the same finished jobs, and each used to fail every ``running`` evaluation
at start-up. Without ownership a job was gated by every replica at once (two evaluations, two
decisions), and a replica restarting failed the evaluations another replica was running.

Each process has an ``owner`` id, ``<replica_id>:<boot>``. An evaluation run or gate it starts
is stored with that owner and a ``heartbeat_at`` the process refreshes every quarter of
``work_lease_s``. Work counts as alive while its heartbeat is fresh; a gate is *claimed* in one
conditional write (taken over only when it is not held by a live owner), so two replicas never
run it at once. Work whose heartbeat is older than the lease (its process died) is failed as
``interrupted`` by any replica's sweep; work of this replica's previous process (same
``replica_id``, another boot) is failed at once at start-up: that process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("tuneloop.gateway.leases")


@dataclass(frozen=True)
class WorkLease:
    replica: str
    lease_s: float = 60.0
    boot: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def owner(self) -> str:
        return f"{self.replica}:{self.boot}"

    def now(self) -> int:
        return int(time.time())

    def stale_before(self) -> int:
        """Work whose heartbeat is older than this has no live owner."""
        return self.now() - int(self.lease_s)

    def held_elsewhere(self, owner: str | None, heartbeat_at: int | None) -> bool:
        """Whether another live process holds work stored with ``owner``/``heartbeat_at`` (the
        negation, in SQL and for any owner, is ``repository.leases.no_live_owner``)."""
        return owner not in (None, self.owner) and (heartbeat_at or 0) >= self.stale_before()

    def previous_boot_prefix(self) -> str:
        """Owner ids of this replica (any boot): ``LIKE`` prefix, escaped by the caller's query."""
        return f"{self.replica}:"


class LeaseKeeper:
    """Refreshes this process's leases and sweeps dead owners' work, every ``lease_s / 4``.

    ``refresh`` callbacks renew the heartbeat of the work this process owns; ``sweep`` callbacks
    fail work whose owner stopped refreshing it. Both run on the database through the
    repositories (offloaded); an error is logged and tried again next tick."""

    def __init__(self, lease: WorkLease) -> None:
        self.lease = lease
        self.refresh: list[Callable[[WorkLease], Awaitable[int]]] = []
        self.sweep: list[Callable[[WorkLease], Awaitable[int]]] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="work-leases")

    async def tick(self) -> int:
        """One refresh + sweep; returns how many dead owners' items were failed."""
        for renew in self.refresh:
            await renew(self.lease)
        failed = 0
        for sweep in self.sweep:
            failed += await sweep(self.lease)
        return failed

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease.lease_s / 4)
            try:
                if failed := await self.tick():
                    log.warning("failed work of a stopped replica",
                                extra={"items": failed, "lease_s": self.lease.lease_s})
            except Exception as exc:  # the database may be briefly away; next tick
                log.warning("lease refresh failed", extra={"error": repr(exc)})

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
