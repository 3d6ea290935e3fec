"""The supervisor's half of the trainer's data-access boundary (:mod:`.repository` says what the
boundary is): the persistent queue's state changes. Claim the oldest queued job, record its
handle, record the events its process wrote, record how it ended (registering the model
version), re-queue it after a restart, record the callback's outcome.

Every method is ``async`` (:func:`tuneloop.offload.offloaded`) and one unit of work. The event
file and the result live in the artifact store: the supervisor reads them (through
:func:`tuneloop.offload.offload`) and hands them in; events are recorded only if the job's
``events_offset`` is still the one they were read from, in the same transaction as the write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.offload import offloaded

from .db import Job, ModelVersion
from .events import fold_progress
from .executors.base import Exit
from .repository import add_event, finish, load_job, now


@dataclass(frozen=True)
class Drained:
    """Events read from a job's event file: from byte ``offset`` (the job's ``events_offset``
    when it was read) to byte ``end``."""

    offset: int
    events: list[dict[str, Any]]
    end: int


class JobQueue:
    """The queue's transitions: queued -> running (claimed, then its handle) -> an end."""

    def __init__(self, db: Database, executor: str, artifact_url: str) -> None:
        self.db = db
        self.executor = executor  # recorded on the jobs it claims
        self.artifact_url = artifact_url  # recorded in the model versions it registers

    # ------------------------------------------------------------------ reads
    @offloaded
    def running(self) -> list[tuple[str, dict[str, Any] | None, int]]:
        """(id, handle, events_offset) of every running job."""
        with self.db.session() as s:
            return [(j.id, j.handle, j.events_offset)
                    for j in s.scalars(select(Job).where(Job.status == "running"))]

    @offloaded
    def events_offset(self, job_id: str) -> int:
        """Where the job's unread events start in its event file."""
        with self.db.session() as s:
            return load_job(s, job_id).events_offset

    @offloaded
    def undelivered_callbacks(self) -> list[str]:
        """Succeeded jobs whose success callback was not delivered (a restart retries it)."""
        with self.db.session() as s:
            return list(s.scalars(select(Job.id).where(Job.status == "succeeded",
                                                       Job.callback_delivered.is_(False),
                                                       Job.callback_url.is_not(None))))

    # ------------------------------------------------------------------ start
    @offloaded
    def claim_next(self, limit: int, free_gpus: int | None = None) -> tuple[str, int] | None:
        """Claim the oldest queued job if a slot (and, with a GPU pool, its GPUs) is free:
        (job id, its GPUs). FIFO: a multi-GPU job at the head waits for its GPUs rather than
        being overtaken."""
        with self.db.session() as s:
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
            job.executor = self.executor
            job.progress = {k: v for k, v in (job.progress or {}).items() if not k.startswith("_")}
            return job.id, gpus

    @offloaded
    def mark_running(self, job_id: str, handle: dict[str, Any]) -> None:
        """The claimed job's process started: its handle and the ``running`` event."""
        with self.db.session() as s:
            job = load_job(s, job_id)
            job.handle = handle
            msg = "started" if job.attempts == 1 else f"restarted (attempt {job.attempts})"
            add_event(s, job, "state", {"status": "running", "message": msg,
                                        "executor": self.executor, **handle})

    @offloaded
    def fail_start(self, job_id: str, reason: str) -> None:
        """The claimed job's process could not be started: failed (``executor_error``)."""
        with self.db.session() as s:
            job = load_job(s, job_id)
            finish(s, job, "failed", {"code": "executor_error", "message": reason},
                   f"could not start: {reason}")

    # ------------------------------------------------------------------ while it runs
    @offloaded
    def append_events(self, job_id: str, drained: Drained) -> dict[str, Any] | None:
        """Record new events and the progress they carry; the progress of a running job (for
        the live metrics), else None."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            return None if job is None else _record_events(s, job, drained)

    @offloaded
    def mark_cancel_sent(self, job_id: str) -> None:
        """The executor was told to stop the job (so it is told once)."""
        with self.db.session() as s:
            job = load_job(s, job_id)
            job.progress = {**(job.progress or {}), "_cancel_sent": True}

    # ------------------------------------------------------------------ endings
    @offloaded
    def record_end(self, job_id: str, ended: Exit, drained: Drained,
                   result: dict[str, Any] | None) -> Job:
        """The job's process ended (``result``: what it wrote, None if nothing): its last
        events, then cancelled (if asked), succeeded (exit 0 and a result: the model version is
        registered) or failed with the reason. The row as it ends."""
        with self.db.session() as s:
            job = load_job(s, job_id)
            _record_events(s, job, drained)
            error = (job.progress or {}).get("_error")
            if job.cancel_requested:
                finish(s, job, "cancelled", None, "cancelled: job process stopped")
            elif ended.returncode == 0 and result is not None:
                _register_model(s, job, result, self.artifact_url)
                p = job.progress or {}
                p.update({"step": result["metrics"].get("global_step"),
                          "total_steps": result["metrics"].get("max_steps")})
                job.progress = dict(p)
                finish(s, job, "succeeded", None, f"model version {job.model_id} registered")
            else:
                err = error or {"code": ended.code or "process_failed",
                                "message": ended.reason or "job process ended without a result"}
                if error and ended.reason and ended.returncode < 0:
                    err = {**error, "message": f"{error['message']} ({ended.reason})"}
                if ended.returncode == 0:
                    err = {"code": "result_missing", "message": "job process exited 0 without a result"}
                finish(s, job, "failed", err, f"failed: {err['message'][:300]}")
            job.progress = {k: v for k, v in (job.progress or {}).items() if not k.startswith("_")}
            return job

    @offloaded
    def requeue(self, job_id: str, drained: Drained) -> dict[str, Any] | None:
        """A job a previous instance left running (its process is gone): its last events, then
        queued again to resume from its last checkpoint, or cancelled if that was asked. As
        :meth:`append_events`, the progress the events gave the running job, or None."""
        with self.db.session() as s:
            job = load_job(s, job_id)
            progress = _record_events(s, job, drained)
            if job.cancel_requested:
                finish(s, job, "cancelled", None, "cancelled (service restarted meanwhile)")
                return progress
            job.status, job.handle = "queued", None
            add_event(s, job, "state", {
                "status": "queued", "message": "service restarted while the job ran: re-queued; it "
                "resumes from its last checkpoint", "reason": "service_restart"})
            return progress

    @offloaded
    def callback_done(self, job_id: str, attempts: int, error: str | None) -> None:
        """The success callback's outcome (``error`` None: delivered), as a ``callback`` event."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            job.callback_delivered = error is None
            data: dict[str, Any] = {"url": job.callback_url, "attempts": attempts,
                                    "delivered": error is None}
            if error:
                data["error"] = error
            add_event(s, job, "callback", data)


def _record_events(s: Session, job: Job, drained: Drained) -> dict[str, Any] | None:
    """``drained``'s events and the progress they carry, unless there are none or the job's
    events were recorded past ``drained.offset`` meanwhile (then they are already here). The
    progress if the job is running, else None."""
    if not drained.events or job.events_offset != drained.offset:
        return None
    for ev in drained.events:
        add_event(s, job, ev.get("type", "info"), ev.get("data") or {}, ev.get("ts"))
    job.progress = fold_progress(job.progress or {}, drained.events)
    job.events_offset = drained.end
    return job.progress if job.status == "running" else None


def _register_model(s: Session, job: Job, result: dict[str, Any], artifact_url: str) -> None:
    """Lineage record: dataset version, base + revision, full config, metrics, artifacts, checks."""
    record = {
        "id": job.model_id, "object": "model_version", "job_id": job.id,
        "dataset_id": job.dataset_id, "base_model": job.base_model,
        "base_revision": result.get("base_revision"), "backend": result.get("backend"),
        "suffix": job.suffix,
        "config": {"backend": job.backend, "resolved_backend": result.get("backend"),
                   "gpus": job.gpus,
                   "hyperparameters": job.hyperparameters, "export": job.export,
                   "resolved_hyperparameters": result.get("metrics", {}).get("hyperparameters")},
        "metrics": result.get("metrics", {}), "artifacts": result.get("artifacts", {}),
        "export_checks": result.get("export_checks", []),
        "artifact_url": artifact_url, "created_at": now(),
    }
    if s.get(ModelVersion, job.model_id) is None:
        s.add(ModelVersion(id=job.model_id, job_id=job.id, created_at=record["created_at"],
                           record=record))
    job.registered = True
