"""The supervisor: one asyncio task that moves jobs through their states.

Every ``poll_interval_s``: tail each running job's event file into the DB (and its progress),
notice processes that ended (success -> register the model version + callback; crash, OOM,
kill -> failed with the reason; cancel -> cancelled), then start queued jobs in FIFO order while
fewer than ``max_concurrent_jobs`` run. On start, jobs left 'running' by a previous instance
are re-attached (Kubernetes) or re-queued to resume from their last checkpoint (local).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneloop import layout
from tuneloop.offload import offload

from .db import Job
from .events import read_store_events
from .executors import Executor, Exit
from .metrics import TrainerMetrics
from .service import TrainerService, now

log = logging.getLogger("tuneloop.trainer.supervisor")

_PROGRESS_KEYS = ("step", "total_steps", "epoch", "loss", "learning_rate", "tokens_per_s", "eta_s",
                  "step_time_s", "peak_gpu_bytes", "peak_rss_bytes", "num_tokens")


class Supervisor:
    def __init__(self, svc: TrainerService, executor: Executor, metrics: TrainerMetrics) -> None:
        self.svc = svc
        self.executor = executor
        self.metrics = metrics
        self.wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._callbacks: set[asyncio.Task] = set()
        self.started_at: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.recover()
        self._task = asyncio.create_task(self._loop(), name="trainer-supervisor")
        for job_id in await offload(self._undelivered_callbacks):
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
        rows = await offload(self._running_rows)
        for job_id, handle in rows:
            if await self.executor.recover(job_id, handle):
                log.info("re-attached running job", extra={"job_id": job_id})
                continue
            await offload(self._requeue, job_id)

    def _running_rows(self) -> list[tuple[str, Any]]:
        with self.svc.db.session() as s:
            return [(j.id, j.handle) for j in s.scalars(select(Job).where(Job.status == "running"))]

    def _requeue(self, job_id: str) -> None:
        with self.svc.db.session() as s:
            job = self.svc.get_row(s, job_id)
            self._drain(s, job)
            if job.cancel_requested:
                self.svc.finish(s, job, "cancelled", None, "cancelled (service restarted meanwhile)")
                return
            job.status, job.handle = "queued", None
            self.svc._add_event(s, job, "state", {
                "status": "queued", "message": "service restarted while the job ran: re-queued; it "
                "resumes from its last checkpoint", "reason": "service_restart"})

    def _undelivered_callbacks(self) -> list[str]:
        with self.svc.db.session() as s:
            return list(s.scalars(select(Job.id).where(Job.status == "succeeded",
                                                       Job.callback_delivered.is_(False),
                                                       Job.callback_url.is_not(None))))

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
        running = await offload(self._running_rows)
        for job_id, handle in running:
            await offload(self._tail, job_id)
            if handle is None:
                continue
            await self._maybe_cancel(job_id, handle)
            ended = await self.executor.poll(job_id, handle)
            if ended is not None:
                await self._finished(job_id, ended)
        await self._start_queued()
        self.metrics.set_counts(await offload(self.svc.counts))

    async def _maybe_cancel(self, job_id: str, handle: dict[str, Any]) -> None:
        row = await offload(self.svc.job_row, job_id)
        if row.cancel_requested and not (row.progress or {}).get("_cancel_sent"):
            await self.executor.cancel(job_id, handle)
            await offload(self._mark_cancel_sent, job_id)

    def _mark_cancel_sent(self, job_id: str) -> None:
        with self.svc.db.session() as s:
            job = self.svc.get_row(s, job_id)
            job.progress = {**(job.progress or {}), "_cancel_sent": True}

    async def _start_queued(self) -> None:
        limit = self.svc.settings.max_concurrent_jobs
        while True:
            free = self.executor.free_gpus()
            claimed = await offload(self._next_queued, limit, free)
            if claimed is None:
                return
            job_id, gpus = claimed
            try:
                handle = await self.executor.start(job_id, gpus)
            except Exception as exc:
                await offload(self._fail_start, job_id, str(exc))
                continue
            self.started_at[job_id] = time.monotonic()
            await offload(self._mark_running, job_id, handle)

    def _next_queued(self, limit: int, free_gpus: int | None = None) -> tuple[str, int] | None:
        """Claim the oldest queued job if a slot (and, with a GPU pool, its GPUs) is free. FIFO:
        a multi-GPU job at the head waits for its GPUs rather than being overtaken."""
        with self.svc.db.session() as s:
            n_running = len(list(s.scalars(select(Job.id).where(Job.status == "running"))))
            if n_running >= limit:
                return None
            # FOR UPDATE SKIP LOCKED on PostgreSQL: two supervisors never claim the same job
            # (SQLite renders no locking clause; its single writer serialises the claim)
            job = s.scalars(select(Job).where(Job.status == "queued")
                            .order_by(Job.queued_at, Job.created_at).limit(1)
                            .with_for_update(skip_locked=True)).first()
            if job is None:
                return None
            gpus = job.gpus or 1
            if free_gpus is not None and gpus > free_gpus:
                return None
            job.status = "running"  # claimed (handle follows)
            job.attempts += 1
            job.started_at = job.started_at or now()
            job.executor = self.executor.name
            job.progress = {k: v for k, v in (job.progress or {}).items() if not k.startswith("_")}
            return job.id, gpus

    def _mark_running(self, job_id: str, handle: dict[str, Any]) -> None:
        with self.svc.db.session() as s:
            job = self.svc.get_row(s, job_id)
            job.handle = handle
            msg = "started" if job.attempts == 1 else f"restarted (attempt {job.attempts})"
            self.svc._add_event(s, job, "state", {"status": "running", "message": msg,
                                                  "executor": self.executor.name, **handle})

    def _fail_start(self, job_id: str, reason: str) -> None:
        with self.svc.db.session() as s:
            job = self.svc.get_row(s, job_id)
            self.svc.finish(s, job, "failed", {"code": "executor_error", "message": reason},
                            f"could not start: {reason}")
        self._after_terminal(job_id)

    # ------------------------------------------------------------------ events
    def _tail(self, job_id: str) -> None:
        with self.svc.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                self._drain(s, job)

    def _drain(self, s: Session, job: Job) -> None:
        events, offset = read_store_events(self.svc.store, layout.job_events(job.id),
                                           job.events_offset)
        if not events:
            return
        progress = dict(job.progress or {})
        for ev in events:
            type_, data = ev.get("type", "info"), ev.get("data") or {}
            self.svc._add_event(s, job, type_, data, ev.get("ts"))
            if type_ in ("metrics", "train_begin"):
                progress.update({k: data[k] for k in _PROGRESS_KEYS if data.get(k) is not None})
            elif type_ == "eval":
                progress["eval_loss"] = data.get("eval_loss")
            elif type_ == "info" and data.get("backend"):
                progress["backend"] = data["backend"]
            elif type_ == "plan":  # the hyperparameters the job really uses (defaults resolved)
                progress["resolved_hyperparameters"] = data.get("hyperparameters")
            elif type_ == "error":
                progress["_error"] = {"code": data.get("code"), "message": data.get("message")}
        job.progress = progress
        job.events_offset = offset
        if job.status == "running":
            self.metrics.observe_progress(job.id, progress)

    # ------------------------------------------------------------------ endings
    async def _finished(self, job_id: str, ended: Exit) -> None:
        await offload(self._record_end, job_id, ended)
        self._after_terminal(job_id)
        row = await offload(self.svc.job_row, job_id)
        try:
            await self.svc.datasets.unlease(row.dataset_id, job_id)
        except Exception as exc:  # a lost unlease is harmless (the dataset shows a stale holder)
            log.warning("unlease failed", extra={"job_id": job_id, "error": repr(exc)})
        if row.status == "succeeded" and row.callback_url:
            self._schedule_callback(job_id)

    def _record_end(self, job_id: str, ended: Exit) -> None:
        with self.svc.db.session() as s:
            job = self.svc.get_row(s, job_id)
            self._drain(s, job)
            error = (job.progress or {}).get("_error")
            result_key = layout.job_result(job_id)
            if job.cancel_requested:
                self.svc.finish(s, job, "cancelled", None, "cancelled: job process stopped")
            elif ended.returncode == 0 and self.svc.store.exists(result_key):
                result = json.loads(self.svc.store.read_bytes(result_key))
                self.svc.register_model(s, job, result)
                p = job.progress or {}
                p.update({"step": result["metrics"].get("global_step"),
                          "total_steps": result["metrics"].get("max_steps")})
                job.progress = dict(p)
                self.svc.finish(s, job, "succeeded", None,
                                f"model version {job.model_id} registered")
            else:
                err = error or {"code": ended.code or "process_failed",
                                "message": ended.reason or "job process ended without a result"}
                if error and ended.reason and ended.returncode < 0:
                    err = {**error, "message": f"{error['message']} ({ended.reason})"}
                if ended.returncode == 0:
                    err = {"code": "result_missing", "message": "job process exited 0 without a result"}
                self.svc.finish(s, job, "failed", err, f"failed: {err['message'][:300]}")
            job.progress = {k: v for k, v in (job.progress or {}).items() if not k.startswith("_")}
            status = job.status
        self.metrics.finished.labels(status).inc()
        start = self.started_at.pop(job_id, None)
        if start is not None:
            self.metrics.duration.observe(time.monotonic() - start)

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
        row = await offload(self.svc.job_row, job_id)
        body = {"event": "training_job.succeeded", "job_id": job_id, "model_id": row.model_id}
        attempts = self.svc.settings.callback_attempts
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0)) as http:
            for attempt in range(1, attempts + 1):
                try:
                    resp = await http.post(row.callback_url or "", json=body)
                    if resp.status_code < 300:
                        self.metrics.callbacks.labels("delivered").inc()
                        await offload(self._callback_done, job_id, attempt, None)
                        return
                    reason = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                self.metrics.callbacks.labels("retried").inc()
                if attempt < attempts:
                    await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        self.metrics.callbacks.labels("failed").inc()
        await offload(self._callback_done, job_id, attempts, reason)

    def _callback_done(self, job_id: str, attempts: int, error: str | None) -> None:
        with self.svc.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            job.callback_delivered = error is None
            data = {"url": job.callback_url, "attempts": attempts, "delivered": error is None}
            if error:
                data["error"] = error
            self.svc._add_event(s, job, "callback", data)
