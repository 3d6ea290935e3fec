"""The supervisor: one asyncio task that moves jobs through their states.

Every ``poll_interval_s``: tail each running job's event file into the DB (and its progress),
notice processes that ended (success -> register the model version + callback; crash, OOM,
kill -> failed with the reason; cancel -> cancelled), then start queued jobs in FIFO order while
fewer than ``max_concurrent_jobs`` run. On start, jobs left 'running' by a previous instance
are re-attached (Kubernetes) or re-queued to resume from their last checkpoint (local).

Its database work is :class:`.jobqueue.JobQueue`'s (the repository's supervisor half); the event
files and results are read from the store through :func:`tuneloop.offload.offload`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx

from tuneloop import layout
from tuneloop.offload import offload
from tuneloop.storage import ArtifactStore

from .db import Job
from .events import read_store_events
from .executors import Executor, Exit
from .jobqueue import Drained, JobQueue
from .metrics import TrainerMetrics
from .service import TrainerService

log = logging.getLogger("tuneloop.trainer.supervisor")


class Supervisor:
    def __init__(self, svc: TrainerService, executor: Executor, metrics: TrainerMetrics) -> None:
        self.svc = svc
        self.executor = executor
        self.metrics = metrics
        self.queue = JobQueue(svc.db, executor.name, svc.store.url)
        self.wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._callbacks: set[asyncio.Task] = set()
        self.started_at: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.recover()
        self._task = asyncio.create_task(self._loop(), name="trainer-supervisor")
        for job_id in await self.queue.undelivered_callbacks():
            self._schedule_callback(job_id)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for t in list(self._callbacks):
            t.cancel()
        await self.executor.close()

    async def recover(self) -> None:
        """Jobs a previous instance left running: re-attach or re-queue (resume from checkpoint)."""
        for job_id, handle, offset in await self.queue.running():
            if await self.executor.recover(job_id, handle):
                log.info("re-attached running job", extra={"job_id": job_id})
                continue
            drained = await self._read_events(job_id, offset)
            self._observe(job_id, await self.queue.requeue(job_id, drained))

    # ------------------------------------------------------------------ loop
    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop never dies; the next tick retries
                log.exception("supervisor tick failed")
            try:
                await asyncio.wait_for(self.wake.wait(), self.svc.settings.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def tick(self) -> None:
        for job_id, handle, offset in await self.queue.running():
            await self._tail(job_id, offset)
            if handle is None:
                continue
            await self._maybe_cancel(job_id, handle)
            ended = await self.executor.poll(job_id, handle)
            if ended is not None:
                await self._finished(job_id, ended)
        await self._start_queued()
        self.metrics.set_counts(await self.svc.counts())

    async def _maybe_cancel(self, job_id: str, handle: dict[str, Any]) -> None:
        row = await self.svc.job_row(job_id)
        if row.cancel_requested and not (row.progress or {}).get("_cancel_sent"):
            await self.executor.cancel(job_id, handle)
            await self.queue.mark_cancel_sent(job_id)

    async def _start_queued(self) -> None:
        limit = self.svc.settings.max_concurrent_jobs
        while True:
            free = self.executor.free_gpus()
            claimed = await self.queue.claim_next(limit, free)
            if claimed is None:
                return
            job_id, gpus = claimed
            try:
                handle = await self.executor.start(job_id, gpus)
            except Exception as exc:
                await self.queue.fail_start(job_id, str(exc))
                self._after_terminal(job_id)
                continue
            self.started_at[job_id] = time.monotonic()
            await self.queue.mark_running(job_id, handle)

    # ------------------------------------------------------------------ events
    async def _read_events(self, job_id: str, offset: int) -> Drained:
        """The job's events in its event file in the store from byte ``offset`` on."""
        events, end = await offload(read_store_events, self.svc.store,
                                    layout.job_events(job_id), offset)
        return Drained(offset, events, end)

    async def _tail(self, job_id: str, offset: int) -> None:
        drained = await self._read_events(job_id, offset)
        if drained.events:
            self._observe(job_id, await self.queue.append_events(job_id, drained))

    def _observe(self, job_id: str, progress: dict[str, Any] | None) -> None:
        """The live metrics of a running job (``progress`` None: nothing new)."""
        if progress is not None:
            self.metrics.observe_progress(job_id, progress)

    # ------------------------------------------------------------------ endings
    async def _finished(self, job_id: str, ended: Exit) -> None:
        row = await self._record_end(job_id, ended)
        self._after_terminal(job_id)
        try:
            await self.svc.datasets.unlease(row.dataset_id, job_id)
        except Exception as exc:  # a lost unlease is harmless (the dataset shows a stale holder)
            log.warning("unlease failed", extra={"job_id": job_id, "error": repr(exc)})
        if row.status == "succeeded" and row.callback_url:
            self._schedule_callback(job_id)

    async def _record_end(self, job_id: str, ended: Exit) -> Job:
        """Its last events and result (read from the store), then its final state."""
        drained = await self._read_events(job_id, await self.queue.events_offset(job_id))
        result = await offload(_read_result, self.svc.store, job_id) if ended.returncode == 0 else None
        row = await self.queue.record_end(job_id, ended, drained, result)
        self.metrics.finished.labels(row.status).inc()
        start = self.started_at.pop(job_id, None)
        if start is not None:
            self.metrics.duration.observe(time.monotonic() - start)
        return row

    def _after_terminal(self, job_id: str) -> None:
        self.metrics.forget(job_id)

    # ------------------------------------------------------------------ callback
    def _schedule_callback(self, job_id: str) -> None:
        task = asyncio.create_task(self._callback(job_id))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def _callback(self, job_id: str) -> None:
        """POST ``{"event", "job_id", "model_id"}``, retried with backoff (the gateway also
        reconciles by listing, so a lost callback loses nothing)."""
        row = await self.svc.job_row(job_id)
        body = {"event": "training_job.succeeded", "job_id": job_id, "model_id": row.model_id}
        attempts = self.svc.settings.callback_attempts
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0)) as http:
            for attempt in range(1, attempts + 1):
                try:
                    resp = await http.post(row.callback_url or "", json=body)
                    if resp.status_code < 300:
                        self.metrics.callbacks.labels("delivered").inc()
                        await self.queue.callback_done(job_id, attempt, None)
                        return
                    reason = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                self.metrics.callbacks.labels("retried").inc()
                if attempt < attempts:
                    await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        self.metrics.callbacks.labels("failed").inc()
        await self.queue.callback_done(job_id, attempts, reason)


def _read_result(store: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    """What the job process wrote as its result, None if nothing."""
    key = layout.job_result(job_id)
    return json.loads(store.read_bytes(key)) if store.exists(key) else None
