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
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func, select

from tuneloop.clients.base import ServiceError
from tuneloop.db import Database
from tuneloop.errors import Conflict, InvalidRequest, NotFound, TuneloopError
from tuneloop.ids import is_valid_id, new_id

from .db import Canary, Capture
from .flywheel.capture import CaptureRecorder, Pending
from .schemas import PromoteRequest

log = logging.getLogger("tuneloop.gateway.canary")

CANARY_SYNC_S = 2.0
FALLBACK_STATUS = {404, 429}  # the candidate is gone or full: the stable model answers
SHADOW_IN_FLIGHT = 8  # mirrored requests at once per process; more are skipped and counted
LATENCY_WINDOW = 1000
STREAM_BROKE = b"upstream_stream_error"
STREAM_DONE = b"data: [DONE]"

Send = Callable[[bytes], Awaitable[Response]]


@dataclass
class Arm:
    """One arm's live counts: requests, errors, fallbacks and the last latencies."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def add(self, ok: bool, latency: float | None) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        if ok and latency is not None:
            self.latencies.append(latency)

    def p(self, q: float) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "fallbacks": self.fallbacks,
                "error_rate": round(self.errors / self.requests, 4) if self.requests else None,
                "latency_p50_s": self.p(0.5), "latency_p95_s": self.p(0.95),
                "latency_samples": len(self.latencies)}

    @classmethod
    def restore(cls, saved: dict[str, Any] | None) -> "Arm":
        saved = saved or {}
        return cls(int(saved.get("requests") or 0), int(saved.get("errors") or 0),
                   int(saved.get("fallbacks") or 0))


@dataclass
class Live:
    """A running canary as the request path sees it."""

    id: str
    alias: str
    stable: str
    candidate: str
    mode: str
    weight: float
    limits: dict[str, Any]
    arms: dict[str, Arm]
    rng: random.Random = field(default_factory=random.Random)
    dirty: bool = False

    @property
    def candidate_arm(self) -> str:
        return "shadow" if self.mode == "shadow" else "candidate"


def canary_view(row: Canary, live: Live | None = None,
                quality: dict[str, Any] | None = None) -> dict[str, Any]:
    stats = {k: a.summary() for k, a in live.arms.items()} if live else dict(row.stats or {})
    return {"id": row.id, "object": "canary", "alias": row.alias, "stable": row.stable,
            "candidate": row.candidate, "model_id": row.model_id, "mode": row.mode,
            "weight": row.weight, "status": row.status, "limits": row.limits,
            "comparison": {**stats, "quality": quality or {}}, "events": row.events,
            "promotion_id": row.promotion_id, "note": row.note, "created_at": row.created_at,
            "finished_at": row.finished_at}


class CanaryService:
    """Canary state (database + the live set this process routes by) and the request path."""

    def __init__(self, db: Database, metrics: Any, inference: Any, promotions: Any,
                 recorder: CaptureRecorder, upstream: Any) -> None:
        self.db = db
        self.metrics = metrics
        self.inference = inference
        self.promotions = promotions
        self.recorder = recorder
        self.upstream = upstream  # the inference Upstream (its aiohttp session) for shadows
        self.live: dict[str, Live] = {}  # by alias
        self._task: asyncio.Task | None = None
        self._shadows: set[asyncio.Task] = set()
        self._writes: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._sync()
        self._task = asyncio.create_task(self._sync_loop(), name="canary-sync")

    async def aclose(self) -> None:
        for t in [self._task, *self._shadows]:
            if t is not None:
                t.cancel()
        for t in [self._task, *self._shadows, *self._writes]:
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        await asyncio.to_thread(self._save_stats, self._dirty())

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(CANARY_SYNC_S)
            try:
                await self.refresh()
            except Exception as exc:  # the database may be briefly away; next round
                log.warning("canary sync failed", extra={"error": repr(exc)})

    async def refresh(self) -> None:
        """Store the counts, then follow the database (read in a thread, applied on the loop:
        the request path reads ``live`` without a lock)."""
        await asyncio.to_thread(self._save_stats, self._dirty())
        self._apply(await asyncio.to_thread(self._running_rows))

    def _sync(self) -> None:
        self._apply(self._running_rows())

    def _running_rows(self) -> list[Canary]:
        with self.db.session() as s:
            rows = list(s.scalars(select(Canary).where(Canary.status == "running")))
            s.expunge_all()
            return rows

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

    def _save_stats(self, dirty: list[tuple[str, dict[str, Any]]]) -> None:
        if not dirty:
            return
        with self.db.session() as s:
            for cid, stats in dirty:
                row = s.get(Canary, cid)
                if row is not None and row.status == "running":
                    row.stats = stats

    # -- the request path --------------------------------------------------------------
    def routes(self, model: object) -> Live | None:
        return self.live.get(model) if isinstance(model, str) else None

    async def dispatch(self, live: Live, body: dict[str, Any], raw: bytes,
                       pending: Pending | None, send: Send) -> Response:
        """Answer a request for ``live.alias``: from the candidate (its weighted share, with the
        stable model as the fallback) or the stable model (and a mirror to the candidate)."""
        if live.mode == "weighted" and live.rng.random() < live.weight:
            resp = await self._candidate(live, body, send)
            if resp is not None:
                _mark(pending, live.id, "candidate")
                return resp
        _mark(pending, live.id, "stable")
        resp = await self._timed(live, "stable", send, raw)
        if live.mode == "shadow" and resp.status_code == 200:
            self._mirror(live, body, pending)
        return resp

    async def _timed(self, live: Live, arm: str, send: Send, raw: bytes) -> Response:
        t0 = time.perf_counter()
        try:
            resp = await send(raw)
        except TuneloopError:
            self._record(live, arm, False, None)
            raise
        return self._watch(live, arm, resp, time.perf_counter() - t0)

    async def _candidate(self, live: Live, body: dict[str, Any], send: Send) -> Response | None:
        """The candidate's answer, or None (counted as a fallback) when it failed before any
        answer byte; the caller then asks the stable model."""
        t0 = time.perf_counter()
        try:
            resp = await send(json.dumps({**body, "model": live.candidate}).encode())
        except TuneloopError as exc:
            why = exc.code or "error"
        else:
            if resp.status_code < 500 and resp.status_code not in FALLBACK_STATUS:
                return self._watch(live, "candidate", resp, time.perf_counter() - t0)
            why = f"http_{resp.status_code}"
        live.arms["candidate"].fallbacks += 1
        self.metrics.canary_requests.labels("candidate", "fallback").inc()
        log.info("canary fallback", extra={"canary_id": live.id, "why": why})
        self._record(live, "candidate", False, None)
        return None

    def _watch(self, live: Live, arm: str, resp: Response, latency: float) -> Response:
        """Count the answer: at once, or at the end of a stream (a stream broken by the
        upstream ends with our error event)."""
        if not isinstance(resp, StreamingResponse):
            self._record(live, arm, resp.status_code < 500, latency)
            return resp
        resp.body_iterator = self._stream(live, arm, resp.body_iterator, latency)
        return resp

    async def _stream(self, live: Live, arm: str, chunks: AsyncIterator[bytes],
                      latency: float) -> AsyncIterator[bytes]:
        """Counted when ``[DONE]`` or our error event passes (before it is sent: the OpenAI
        SDK closes the connection on ``[DONE]``), else at the end; a client gone mid-stream
        is not counted."""
        counted = False
        async for chunk in chunks:
            if not counted and (STREAM_DONE in chunk or STREAM_BROKE in chunk):
                counted = True
                self._record(live, arm, STREAM_BROKE not in chunk, latency)
            yield chunk
        if not counted:
            self._record(live, arm, True, latency)

    def _mirror(self, live: Live, body: dict[str, Any], pending: Pending | None) -> None:
        if len(self._shadows) >= SHADOW_IN_FLIGHT:
            self.metrics.canary_requests.labels("shadow", "skipped").inc()
            return
        task = asyncio.create_task(self._shadow(live, body, pending))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, live: Live, body: dict[str, Any], pending: Pending | None) -> None:
        """Send the same request to the candidate (not streamed); record the outcome and, when
        the request is captured, the candidate's answer as a capture of the ``shadow`` arm."""
        mirrored = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        mirrored["model"] = live.candidate
        ups = self.upstream
        path = "/v1/chat/completions" if pending is None or pending.endpoint == "chat" \
            else "/v1/completions"
        if "messages" not in body:
            path = "/v1/completions"
        headers = {"content-type": "application/json"}
        if ups.api_key:
            headers["authorization"] = f"Bearer {ups.api_key}"
        started, t0 = time.perf_counter(), time.perf_counter()
        try:
            async with ups.session.post(ups.base_url + path, data=json.dumps(mirrored).encode(),
                                        headers=headers) as resp:
                data = await resp.read()
                ok = resp.status < 500 and resp.status not in FALLBACK_STATUS
        except Exception:
            ok, data = False, b""
        self._record(live, "shadow", ok, time.perf_counter() - t0)
        if ok and pending is not None:
            self.recorder.offer(Pending(pending.key_id, pending.endpoint, pending.request, started,
                                        int(time.time()), False, body=data,
                                        finished=time.perf_counter(), canary_id=live.id,
                                        canary_arm="shadow"))

    def _record(self, live: Live, arm: str, ok: bool, latency: float | None) -> None:
        live.arms[arm].add(ok, latency)
        live.dirty = True
        self.metrics.canary_requests.labels(arm, "ok" if ok else "error").inc()
        if ok and latency is not None:
            self.metrics.canary_latency.labels(arm).observe(latency)
        if arm != "stable" and live.alias in self.live:
            why = breach(live)
            if why:
                self._end_now(live, "rolled_back", why, by="limit")

    # -- decisions ---------------------------------------------------------------------
    def _end_now(self, live: Live, status: str, reason: str, *, by: str) -> None:
        """Stop routing at once (this process), then store the decision."""
        if self.live.get(live.alias) is live:
            self.live.pop(live.alias)
        self.metrics.canary_decisions.labels(status, by).inc()
        log.warning("canary ended", extra={"canary_id": live.id, "status": status,
                                           "reason": reason})
        stats = {k: a.summary() for k, a in live.arms.items()}
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(
            self._finish, live.id, status, reason, stats))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _finish(self, cid: str, status: str, reason: str, stats: dict | None = None,
                **fields: Any) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(Canary, cid)
            if row.status == "running":
                row.status, row.finished_at = status, int(time.time())
                row.events = [*row.events, _event(status, reason)]
                if stats is not None:
                    row.stats = stats
                for k, v in fields.items():
                    setattr(row, k, v)
            return canary_view(row)

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
                     limits=limits, stats={}, events=[_event("started", f"{mode} canary of "
                     f"{candidate} on '{alias}' (stable: {stable}), weight {weight}")],
                     note=note, created_at=int(time.time()))
        view = await run_in_threadpool(self._insert, row)
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

    def _insert(self, row: Canary) -> dict[str, Any]:
        with self.db.session() as s:
            if s.scalar(select(Canary).where(Canary.alias == row.alias,
                                             Canary.status == "running")) is not None:
                raise Conflict(f"alias '{row.alias}' already has a running canary",
                               code="canary_exists", param="alias")
            s.add(row)
            s.flush()
            return canary_view(row)

    async def update(self, cid: str, *, weight: float | None, mode: str | None) -> dict[str, Any]:
        view = await run_in_threadpool(self._update, cid, weight, mode)
        await self.refresh()
        return view

    def _update(self, cid: str, weight: float | None, mode: str | None) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._running(s, cid)
            before = (row.mode, row.weight)
            row.weight = row.weight if weight is None else weight
            row.mode = mode or row.mode
            row.events = [*row.events, _event("changed", f"{before[0]} {before[1]} -> "
                                              f"{row.mode} {row.weight}")]
            return canary_view(row)

    async def rollback(self, cid: str, reason: str | None) -> dict[str, Any]:
        """End the canary by hand: the candidate gets no more traffic; the alias is unchanged."""
        await run_in_threadpool(self._get_running, cid)
        live = self._live_by_id(cid)
        if live is not None:
            self.live.pop(live.alias, None)
        stats = {k: a.summary() for k, a in live.arms.items()} if live else None
        self.metrics.canary_decisions.labels("rolled_back", "manual").inc()
        return await run_in_threadpool(self._finish, cid, "rolled_back",
                                       f"rolled back by hand: {reason or 'no reason given'}", stats)

    async def promote(self, cid: str, *, gate: bool, dataset_id: str | None,
                      note: str | None) -> dict[str, Any]:
        """Promote the candidate through the normal path: the alias flip (a promotion decision
        whose evidence is this comparison), or the gate (which flips only on a pass)."""
        row = await run_in_threadpool(self._get_running, cid)
        live = self._live_by_id(cid)
        stats = {k: a.summary() for k, a in live.arms.items()} if live else dict(row.stats)
        quality = await run_in_threadpool(self.quality, cid)
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
            await run_in_threadpool(self.promotions._set, decision["id"], model_id=row.model_id,
                                    evidence={**decision["evidence"], **evidence})
            decision = await run_in_threadpool(self.promotions.get, decision["id"])
        if live is not None:
            self.live.pop(live.alias, None)
        status = "promoted" if decision["status"] == "promoted" else "stopped"
        self.metrics.canary_decisions.labels(status, "gate" if gate else "manual").inc()
        reason = (f"promoted: '{row.alias}' now serves {row.candidate}" if status == "promoted"
                  else f"the gate decided '{decision['status']}': the alias stays on {row.stable}")
        view = await run_in_threadpool(self._finish, cid, status, reason, stats,
                                       promotion_id=decision["id"])
        return {**view, "promotion": decision}

    # -- reads -------------------------------------------------------------------------
    def _live_by_id(self, cid: str) -> Live | None:
        return next((lv for lv in self.live.values() if lv.id == cid), None)

    def _running(self, s: Any, cid: str) -> Canary:
        row = s.get(Canary, cid)
        if row is None:
            raise NotFound(f"canary '{cid[:80]}' not found", code="canary_not_found")
        if row.status != "running":
            raise Conflict(f"canary {cid} is {row.status}", code="canary_not_running")
        return row

    def _get_running(self, cid: str) -> Canary:
        with self.db.session() as s:
            row = self._running(s, cid)
            s.expunge(row)
            return row

    def get(self, cid: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(Canary, cid)
            if row is None:
                raise NotFound(f"canary '{cid[:80]}' not found", code="canary_not_found")
            live = self._live_by_id(cid) if row.status == "running" else None
            return canary_view(row, live, self.quality(cid))

    def list(self, *, status: str | None, alias: str | None, limit: int) -> list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(Canary).order_by(Canary.created_at.desc(), Canary.id).limit(limit)
            if status:
                q = q.where(Canary.status == status)
            if alias:
                q = q.where(Canary.alias == alias)
            rows = list(s.scalars(q))
            return [canary_view(r, self._live_by_id(r.id) if r.status == "running" else None)
                    for r in rows]

    def quality(self, cid: str) -> dict[str, Any]:
        """Feedback on each arm's captured answers (captured traffic only): how many were rated,
        thumbs up / down, corrected, and the share of thumbs up."""
        with self.db.session() as s:
            rows = s.execute(select(Capture.canary_arm, Capture.rating,
                                    func.count(Capture.correction), func.count())
                             .where(Capture.canary_id == cid)
                             .group_by(Capture.canary_arm, Capture.rating)).all()
        out: dict[str, dict[str, Any]] = {}
        for arm, rating, corrected, n in rows:
            q = out.setdefault(arm or "stable", {"captured": 0, "up": 0, "down": 0, "corrected": 0})
            q["captured"] += n
            q["corrected"] += corrected
            if rating in ("up", "down"):
                q[rating] += n
        for q in out.values():
            rated = q["up"] + q["down"]
            q["up_share"] = round(q["up"] / rated, 4) if rated else None
        return out


def breach(live: Live) -> str | None:
    """The limit the candidate crossed, if any (after ``min_requests`` of its own)."""
    lim, cand, stable = live.limits, live.arms[live.candidate_arm], live.arms["stable"]
    if cand.requests < lim["min_requests"]:
        return None
    rate = cand.errors / cand.requests
    if rate > lim["max_error_rate"]:
        return (f"error rate {rate:.3f} over {cand.requests} requests > limit "
                f"{lim['max_error_rate']}")
    p95 = cand.p(0.95)
    if p95 is None:
        return None
    if lim.get("max_p95_latency_s") is not None and p95 > lim["max_p95_latency_s"]:
        return f"p95 latency {p95:.3f}s > limit {lim['max_p95_latency_s']}s"
    ratio = lim.get("max_latency_ratio")
    base = stable.p(0.95)
    if ratio is not None and base and len(stable.latencies) >= lim["min_requests"] \
            and p95 > ratio * base:
        return f"p95 latency {p95:.3f}s > {ratio} x the stable model's {base:.3f}s"
    return None


def alias_gone(row: Canary | None, live: Live) -> bool:
    return row is None or row.id != live.id


def _mark(pending: Pending | None, cid: str, arm: str) -> None:
    if pending is not None:
        pending.canary_id, pending.canary_arm = cid, arm


def _event(kind: str, detail: str) -> dict[str, Any]:
    return {"at": int(time.time()), "event": kind, "detail": detail}
