"""Canary releases of an alias (docs/flywheel.md, "Canary").

A canary sends a weighted share of an alias's live traffic to a candidate (``weighted``), or
mirrors it there (``shadow``: the stable model answers; the candidate's answer is recorded,
never returned). Each arm's error rate and latency are compared live; where the answers are
captured and rated, their feedback too. The canary rolls back on its own (the candidate gets
no more traffic) when the candidate's error rate, or its p95 latency against the stable
model's, crosses a limit. Promotion goes through the normal path: an alias flip recorded as a
promotion decision (with the comparison as its evidence), or the gate.

Zero failed requests: a request routed to the candidate that fails before any answer byte
(connection error, timeout, 5xx, 404 or 429) is counted against the candidate and sent again
to the stable model, whose answer the client gets. A stream the candidate breaks after its
first byte cannot be sent again; it is counted and usually ends the canary.

Routing is per gateway process and O(1) for aliases without a canary. Each replica routes by
the same weight and keeps its own counts; the active set is re-read from the database every
``CANARY_SYNC_S`` so a canary started, rolled back or promoted on one replica is followed by
the others within seconds (the counts shown are the replica's that answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any


from tuneloop.clients.base import ServiceError
from tuneloop.db import Database
from tuneloop.errors import Conflict, InvalidRequest, NotFound
from tuneloop.ids import is_valid_id, new_id

from ..db import Canary
from ..flywheel.capture import CaptureRecorder
from ..repository.canaries import CanaryRepository, event
from ..schemas import PromoteRequest
from .live import CANARY_SYNC_S, Arm, Live, alias_gone
from .store import CanaryStore, canary_view
from .traffic import CanaryTraffic

log = logging.getLogger("tuneloop.gateway.canary")


class CanaryService(CanaryTraffic):
    """Canaries: the request path (:class:`CanaryTraffic`), following the database, and the
    decisions (start, change, roll back, promote)."""

    def __init__(self, db: Database, metrics: Any, inference: Any, promotions: Any,
                 recorder: CaptureRecorder | None, upstream: Any) -> None:
        self.repo = CanaryRepository(db)
        super().__init__(CanaryStore(self.repo), metrics, recorder, upstream)
        self.inference = inference
        self.promotions = promotions
        self._task: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._sync_loop(), name="canary-sync")

    async def aclose(self) -> None:
        for t in [self._task, *self._shadows]:
            if t is not None:
                t.cancel()
        for t in [self._task, *self._shadows, *self._writes]:
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        await self.repo.save_stats(self._dirty())

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(CANARY_SYNC_S)
            try:
                await self.refresh()
            except Exception as exc:  # the database may be briefly away; next round
                log.warning("canary sync failed", extra={"error": repr(exc)})

    async def refresh(self) -> None:
        """Store the counts, then follow the database (one unit of work in a thread, applied
        on the loop: the request path reads ``live`` without a lock)."""
        self._apply(await self.repo.sync(self._dirty()))

    def _apply(self, rows: list[Canary]) -> None:
        """Follow the database: running canaries are routed, ended ones no longer."""
        running = {r.alias: r for r in rows}
        for alias in [a for a, lv in self.live.items()
                      if alias_gone(running.get(a), lv)]:
            self.live.pop(alias, None)
        for alias, r in running.items():
            lv = self.live.get(alias)
            if lv is None or lv.id != r.id:
                self.live[alias] = Live(r.id, r.alias, r.stable, r.candidate, r.mode, r.weight,
                                        r.limits, {k: Arm.restore((r.stats or {}).get(k))
                                                   for k in ("stable", "candidate", "shadow")})
            else:
                lv.weight, lv.mode, lv.limits = r.weight, r.mode, r.limits

    def _dirty(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for lv in list(self.live.values()):
            if lv.dirty:
                lv.dirty = False
                out.append((lv.id, {k: a.summary() for k, a in lv.arms.items()}))
        return out

    # -- decisions ---------------------------------------------------------------------
    async def create(self, alias: str, model: str, *, mode: str, weight: float,
                     limits: dict[str, Any], note: str | None) -> dict[str, Any]:
        """Start a canary on ``alias`` for ``model`` (a served name, or a model version that
        is deployed first)."""
        stable = await self.inference.alias_target(alias)
        if stable is None:
            raise NotFound(f"alias '{alias[:80]}' not found: a canary needs an alias that serves "
                           "something", code="alias_not_found", param="alias")
        model_id = model if is_valid_id(model, "mv") else None
        candidate = await self._served(model, model_id)
        if candidate == stable:
            raise InvalidRequest(f"'{alias}' already serves {stable}", code="candidate_is_stable",
                                 param="model")
        row = Canary(id=new_id("cny"), alias=alias, stable=stable, candidate=candidate,
                     model_id=model_id, mode=mode, weight=weight, status="running",
                     limits=limits, stats={}, events=[event("started", f"{mode} canary of "
                     f"{candidate} on '{alias}' (stable: {stable}), weight {weight}")],
                     note=note, created_at=int(time.time()))
        view = canary_view(await self.repo.insert(row))
        await self.refresh()
        return view

    async def _served(self, model: str, model_id: str | None) -> str:
        ready = [d for d in await self.inference.deployments() if d.state == "ready"]
        for d in ready:
            if d.model == model or (model_id and d.model_id == model_id and not d.adapter_of):
                return d.model
        if model_id is None:
            raise NotFound(f"model '{model[:80]}' is not served (deploy it, or give a model "
                           "version id)", code="model_not_found", param="model")
        try:
            dep = await self.inference.deploy(model_id=model_id)
        except ServiceError as exc:
            raise Conflict(f"could not deploy {model_id}: {exc.message}",
                           code="deployment_failed", param="model") from exc
        if dep.state != "ready":
            raise Conflict(f"deployment of {model_id} is {dep.state}: {dep.error}",
                           code="deployment_not_ready", param="model")
        return dep.model

    async def update(self, cid: str, *, weight: float | None, mode: str | None) -> dict[str, Any]:
        view = canary_view(await self.repo.update(cid, weight, mode))
        await self.refresh()
        return view

    async def rollback(self, cid: str, reason: str | None) -> dict[str, Any]:
        """End the canary by hand: the candidate gets no more traffic; the alias is unchanged.
        Refused (``canary_not_running``) when it has ended (then this process stops routing
        it too, which its next sync would have done)."""
        live = self._live_by_id(cid)
        if live is not None:
            self.live.pop(live.alias, None)
        stats = {k: a.summary() for k, a in live.arms.items()} if live else None
        row = await self.repo.finish(cid, "rolled_back",
                                     f"rolled back by hand: {reason or 'no reason given'}", stats,
                                     running_only=True)
        self.metrics.canary_decisions.labels("rolled_back", "manual").inc()
        return canary_view(row)

    async def promote(self, cid: str, *, gate: bool, dataset_id: str | None,
                      note: str | None) -> dict[str, Any]:
        """Promote the candidate through the normal path: the alias flip (a promotion decision
        whose evidence is this comparison), or the gate (which flips only on a pass)."""
        row, quality = await self.repo.get(cid, running_only=True)
        live = self._live_by_id(cid)
        stats = {k: a.summary() for k, a in live.arms.items()} if live else dict(row.stats)
        evidence = {"canary": {"id": cid, "mode": row.mode, "weight": row.weight,
                               "comparison": {**stats, "quality": quality}}}
        if gate:
            if not (row.model_id and dataset_id):
                raise InvalidRequest("the gate needs a canary of a model version and a dataset_id",
                                     code="gate_needs_dataset", param="dataset_id")
            decision = await self.promotions.gate_model(row.model_id, dataset_id, None, row.alias)
        else:
            decision = await self.promotions.promote(PromoteRequest(
                alias=row.alias, model=row.candidate,
                note=note or f"promoted from canary {cid}"))
        decision = await self.promotions.amend(decision["id"], model_id=row.model_id,
                                               evidence={**decision["evidence"], **evidence})
        if live is not None:
            self.live.pop(live.alias, None)
        status = "promoted" if decision["status"] == "promoted" else "stopped"
        self.metrics.canary_decisions.labels(status, "gate" if gate else "manual").inc()
        reason = (f"promoted: '{row.alias}' now serves {row.candidate}" if status == "promoted"
                  else f"the gate decided '{decision['status']}': the alias stays on {row.stable}")
        view = canary_view(await self.repo.finish(cid, status, reason, stats,
                                                  promotion_id=decision["id"]))
        return {**view, "promotion": decision}

    # -- reads -------------------------------------------------------------------------
    def _live_by_id(self, cid: str) -> Live | None:
        return next((lv for lv in self.live.values() if lv.id == cid), None)

    async def get(self, cid: str) -> dict[str, Any]:
        row, quality = await self.repo.get(cid)
        live = self._live_by_id(cid) if row.status == "running" else None
        return canary_view(row, live, quality)

    async def list(self, *, status: str | None, alias: str | None,
                   limit: int) -> list[dict[str, Any]]:
        rows = await self.repo.list(status=status, alias=alias, limit=limit)
        return [canary_view(r, self._live_by_id(r.id) if r.status == "running" else None)
                for r in rows]
