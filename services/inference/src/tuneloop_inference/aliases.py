"""Aliases: blue/green flips, rollback, and retiring the version an alias left.

A flip brings the target up if needed (a model version id not deployed yet is deployed from
the store, on as many GPUs as the version it replaces), waits until it is ready and answered a
smoke prompt, then writes the desired state (other replicas follow) and flips local routing in
one step. Only then is the previous version drained and stopped, unless something still uses
it. A target that does not come up leaves the alias unchanged (422).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tuneloop.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from tuneloop.ids import is_valid_id

from .deployments import Deployments
from .metrics import InferenceMetrics
from .observed import ObservedState
from .repository import DesiredState
from .routing import NAME_RE, RoutingTable
from .settings import InferenceSettings


class Aliases:
    def __init__(self, settings: InferenceSettings, repo: DesiredState, observed: ObservedState,
                 routing: RoutingTable, deployments: Deployments,
                 metrics: InferenceMetrics) -> None:
        self.settings, self.repo, self.observed, self.routing = settings, repo, observed, routing
        self.deployments, self.metrics = deployments, metrics

    async def set(self, alias: str, model: str, *, retire_previous: bool = True,
                  action: str = "set", tensor_parallel_size: int | None = None) -> dict[str, Any]:
        """Blue/green: bring ``model`` up (if needed) and smoke it, flip atomically, drain and
        stop the previous version. On load/smoke failure the alias is unchanged (422)."""
        if not NAME_RE.match(alias):
            raise InvalidRequest("alias: letters, digits, '.', '_', ':', '-' (max 128)",
                                 param="alias")
        async with self.routing.swap_lock:
            t0 = time.monotonic()
            loc = await self._target_up(alias, model, tensor_parallel_size)
            if loc.task is not None and not loc.task.done():
                await asyncio.shield(loc.task)
            if loc.state != "ready":
                self.metrics.swaps.labels(alias, action, "rejected").inc()
                code = (loc.error or "model_load_failed").split(":", 1)[0]
                raise Unprocessable(f"'{model}' did not come up, alias '{alias}' unchanged: "
                                    f"{loc.error}", code=code, param="model")
            previous = self.routing.aliases.get(alias)
            if previous is None:
                row = await self.repo.get_alias(alias)
                previous = row.model if row else None
            # the flip: desired state first (other replicas follow), then local routing
            await self.repo.write_alias(alias, model, previous, action)
            self.routing.set_alias(alias, model)
            await self.observed.aliases([(alias, model)])
            flipped_at = time.monotonic() - t0
            retired = None
            if retire_previous and previous and previous != model:
                retired = await self.maybe_retire(previous)
            seconds = time.monotonic() - t0
            self.metrics.swaps.labels(alias, action, "ok").inc()
            self.metrics.swap_duration.labels(alias).observe(seconds)
            await self.repo.record_swap_seconds(alias, seconds)
        out = await self.get(alias)
        out["swap"] = {"previous": previous, "retired": retired, "seconds": round(seconds, 3),
                       "flip_after_seconds": round(flipped_at, 3)}
        return out

    async def _target_up(self, alias: str, model: str, tp: int | None) -> Any:
        """The local deployment of ``model``, deployed or re-activated if needed."""
        if await self.repo.find_by_name(alias) is not None:
            raise Conflict(f"'{alias}' is a served name; pick another alias",
                           code="name_taken", param="alias")
        target = await self.repo.find_by_name(model)
        if target is None:
            if alias == model:
                raise InvalidRequest("an alias cannot point to itself", param="model")
            if not is_valid_id(model, "mv"):
                raise NotFound(f"no deployment serves '{model[:120]}'",
                               code="model_not_found", param="model")
            # same GPUs per engine as the version it replaces
            tp = tp or await self.repo.alias_tp(alias)
            target, _ = await self.deployments.create(model_id=model, tensor_parallel_size=tp)
        elif target.desired != "serving" or target.state == "failed":
            target, _ = await self.deployments.create(
                model_id=target.model_id, name=target.name, path=target.path,
                adapter_of=target.adapter_of, tensor_parallel_size=target.tensor_parallel_size)
        return self.deployments.ensure_local(target)

    async def maybe_retire(self, name: str) -> str | None:
        """Stop the previous version unless another alias or the default model still uses it,
        or runtime LoRA adapters live in its engine (stopping it would kill them)."""
        if name == self.settings.resolved_default_model() or name in self.routing.aliases.values():
            return None
        row = await self.repo.retire_if_unused(name)
        if row is None:
            return None
        await self.deployments.retire(row.id)
        return name

    async def rollback(self, alias: str) -> dict[str, Any]:
        """Flip back to the previous version (the same blue/green path)."""
        row = await self.repo.get_alias(alias)
        if row is None:
            raise _not_found(alias)
        if not row.previous:
            raise Conflict(f"alias '{alias}' has no previous version", code="no_previous_version",
                           param="alias")
        return await self.set(alias, row.previous, action="rollback")

    async def delete(self, alias: str) -> dict[str, Any]:
        async with self.routing.swap_lock:
            if not await self.repo.delete_alias(alias):
                raise _not_found(alias)
            self.routing.drop_alias(alias)
        return {"id": alias, "object": "alias", "deleted": True}

    async def get(self, alias: str) -> dict[str, Any]:
        views = await self.repo.alias_views(alias, self.settings.replica_stale_s)
        if not views:
            raise _not_found(alias)
        return views[0]

    async def list_all(self) -> list[dict[str, Any]]:
        return await self.repo.alias_views(None, self.settings.replica_stale_s)


def _not_found(alias: str) -> NotFound:
    return NotFound(f"alias '{alias[:80]}' not found", code="alias_not_found", param="alias")
