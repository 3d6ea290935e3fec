"""The reconciler: each replica converges on the desired state in the DB, and keeps its engines
healthy.

Every ``reconcile_interval_s`` it starts an engine for every deployment it should serve (an
adapter once its base is routed here), flips an alias locally only once the target version is
ready *here* (until then the old version keeps answering), and drains + stops engines that are no
longer wanted and no alias routes to. Every ``health_interval_s`` it heartbeats and checks ready
engines; one that died, or failed ``health_failures`` checks in a row, is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .deployments import Deployments
from .observed import ObservedState
from .repository import DesiredState
from .routing import RoutingTable
from .settings import InferenceSettings

log = logging.getLogger("tuneloop.inference.reconciler")


class Reconciler:
    def __init__(self, settings: InferenceSettings, repo: DesiredState, observed: ObservedState,
                 routing: RoutingTable, deployments: Deployments) -> None:
        self.settings, self.repo, self.observed, self.routing = settings, repo, observed, routing
        self.deployments = deployments
        self._loops: list[asyncio.Task] = []
        self._last_heartbeat = 0.0
        self.stopping = False

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._loop(self.reconcile_once,
                                                      self.settings.reconcile_interval_s)),
                       asyncio.create_task(self._loop(self.health_once,
                                                      self.settings.health_interval_s))]

    async def stop(self) -> None:
        self.stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    async def _loop(self, fn: Callable[[], Awaitable[None]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller loop step failed")

    async def reconcile_once(self) -> None:
        """Converge this replica on the desired state in the DB."""
        if self.stopping:
            return
        async with self.routing.swap_lock:
            await self._reconcile_locked()

    async def _reconcile_locked(self) -> None:
        deployments, aliases = await self.repo.desired_state()
        wanted = {d.id: d for d in deployments if d.desired == "serving"}
        self.routing.known = {d.name for d in wanted.values()}
        local = self.deployments.local
        for dep in wanted.values():
            if dep.id not in local and dep.state != "failed":
                if dep.adapter_of and dep.adapter_of not in self.routing.routes:
                    continue  # its base comes first
                self.deployments.ensure_local(dep)
        self.routing.desired_aliases = aliases
        await self.observed.aliases(self.routing.follow_desired())
        for dep_id in [d for d in local if d not in wanted]:
            if local[dep_id].name not in self.routing.aliases.values():
                await self.deployments.retire(dep_id)

    async def health_once(self) -> None:
        """Health-check ready engines; restart one that died or stopped answering."""
        if time.monotonic() - self._last_heartbeat > 5:
            self._last_heartbeat = time.monotonic()
            await self.observed.heartbeat()
        for loc in list(self.deployments.local.values()):
            engine = loc.engine
            if engine is None or loc.state != "ready" or self.stopping:
                continue
            if engine.alive() and await engine.check_health():
                loc.failures = 0
                continue
            loc.failures += 1
            if engine.alive() and loc.failures < self.settings.health_failures:
                continue
            log.warning("engine unhealthy, restarting", extra={"deployment": loc.id,
                                                               "alive": engine.alive()})
            loc.state = engine.state = "restarting"
            loc.task = asyncio.create_task(self.deployments.restart(loc))
