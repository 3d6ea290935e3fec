"""The trainer service's one data-access boundary: jobs (the persistent queue), their events,
model versions and uploaded files.

Every method is ``async`` and runs its SQL in a worker thread (:func:`tuneloop.offload.offloaded`,
the one way this service leaves the event loop for blocking work); nothing else in the service
touches the database. A method is one unit of work (one session, one thread hop): checks and
the write they guard happen in the same transaction. Rows come back detached (sessions do not
expire them on commit); API views as dicts (:mod:`.views`).

Two classes: :class:`TrainerRepository` here, what the API reads and writes through the service
(create, read, cancel, delete; model versions; files), and :class:`.jobqueue.JobQueue`, the
supervisor's state changes (claim, start, events, end, re-queue, callbacks). The artifact store
(specs, event files, results, uploads) is no part of it: callers read and write the store through
:func:`tuneloop.offload.offload` and hand the repository what they read.

The job process (``run_job`` and the pipeline, a separate synchronous process) has no database
access at all: it reports to the service only through the artifact store (:mod:`.events`), so
nothing of it belongs here.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound
from tuneloop.ids import require_id
from tuneloop.offload import offloaded

from .db import TERMINAL, File, Job, JobEvent, ModelVersion
from .views import event_view, file_view, job_view


def now() -> int:
    return int(time.time())


class TrainerRepository:
    """Jobs, events, model versions and files as the API sees them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ jobs
    @offloaded
    def enqueue(self, job: Job) -> dict[str, Any]:
        """Add a validated job (status ``queued``) with its first event; its view."""
        with self.db.session() as s:
            s.add(job)
            s.flush()  # the column defaults (next_seq) are set
            add_event(s, job, "state", {"status": "queued", "message": "job validated and queued"})
            return job_view(job)

    @offloaded
    def get_job(self, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return job_view(load_job(s, job_id))

    @offloaded
    def job_row(self, job_id: str) -> Job:
        with self.db.session() as s:
            return load_job(s, job_id)

    @offloaded
    def list_jobs(self, *, status: str | None = None, limit: int = 20,
                  after: str | None = None) -> dict[str, Any]:
        """Newest first; ``after`` is a job id (cursor)."""
        with self.db.session() as s:
            rows, more = _page(s, limit, after, status)
            return {"object": "list", "data": [job_view(j) for j in rows], "has_more": more}

    @offloaded
    def list_rows(self, *, limit: int, after: str | None) -> tuple[list[Job], bool]:
        """The rows of :meth:`list_jobs` (no status filter) and whether more follow."""
        with self.db.session() as s:
            return _page(s, limit, after, None)

    @offloaded
    def counts(self) -> dict[str, int]:
        """Jobs by status."""
        with self.db.session() as s:
            return {st: n for st, n in s.execute(select(Job.status, func.count()).group_by(Job.status))}

    @offloaded
    def request_cancel(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """Queued -> cancelled now; running -> flagged (the supervisor kills the process).
        Returns (job view, needs_kill); 409 ``job_not_cancellable`` once it ended."""
        with self.db.session() as s:
            job = load_job(s, job_id)
            if job.status in TERMINAL:
                raise Conflict(f"job '{job_id}' is already {job.status}", code="job_not_cancellable",
                               param="job_id")
            if job.status == "running":
                job.cancel_requested = True
                add_event(s, job, "state", {"status": "cancelling",
                                            "message": "cancel requested; stopping the process"})
                return job_view(job), True
            finish(s, job, "cancelled", None, "cancelled before it started")
            return job_view(job), False

    @offloaded
    def delete_job(self, job_id: str) -> None:
        """Remove a finished job and its events (409 ``job_active`` while it is not)."""
        with self.db.session() as s:
            job = load_job(s, job_id)
            if job.status not in TERMINAL:
                raise Conflict(f"job '{job_id}' is {job.status}; cancel it first", code="job_active",
                               param="job_id")
            s.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
            s.delete(job)

    # ------------------------------------------------------------------ events
    @offloaded
    def events(self, job_id: str, after: int = 0, limit: int = 100,
               newest_first: bool = False) -> dict[str, Any]:
        """A page of the job's events after sequence number ``after`` (oldest first), or
        before it (``newest_first``; 0: from the newest)."""
        with self.db.session() as s:
            load_job(s, job_id)
            q = select(JobEvent).where(JobEvent.job_id == job_id)
            if newest_first:
                if after:
                    q = q.where(JobEvent.seq < after)
                q = q.order_by(JobEvent.seq.desc())
            else:
                q = q.where(JobEvent.seq > after).order_by(JobEvent.seq)
            rows = list(s.scalars(q.limit(limit + 1)))
            return {"object": "list", "data": [event_view(e) for e in rows[:limit]],
                    "has_more": len(rows) > limit}

    @offloaded
    def events_of_type(self, job_id: str, type_: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            load_job(s, job_id)
            rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == type_)
                             .order_by(JobEvent.seq))
            return [event_view(e) for e in rows]

    # ------------------------------------------------------------------ model versions
    @offloaded
    def get_model(self, model_id: str) -> dict[str, Any]:
        require_id(model_id, "mv", "model")
        with self.db.session() as s:
            mv = s.get(ModelVersion, model_id)
            if mv is None:
                raise NotFound(f"model version '{model_id}' not found", code="model_not_found",
                               param="model_id")
            return mv.record

    @offloaded
    def list_models(self, limit: int = 50) -> dict[str, Any]:
        with self.db.session() as s:
            rows = list(s.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())
                                  .limit(limit + 1)))
            return {"object": "list", "data": [r.record for r in rows[:limit]],
                    "has_more": len(rows) > limit}

    # ------------------------------------------------------------------ files (OpenAI)
    @offloaded
    def add_file(self, file_id: str, filename: str, size: int, purpose: str, dataset_id: str,
                 key: str) -> dict[str, Any]:
        with self.db.session() as s:
            f = File(id=file_id, filename=filename, bytes=size, purpose=purpose,
                     dataset_id=dataset_id, key=key, created_at=now())
            s.add(f)
            return file_view(f)

    @offloaded
    def get_file_row(self, file_id: str) -> File:
        with self.db.session() as s:
            return _load_file(s, file_id)

    @offloaded
    def list_files(self, purpose: str | None = None) -> dict[str, Any]:
        with self.db.session() as s:
            q = select(File).order_by(File.created_at.desc())
            if purpose:
                q = q.where(File.purpose == purpose)
            return {"object": "list", "data": [file_view(f) for f in s.scalars(q)], "has_more": False}

    @offloaded
    def delete_file(self, file_id: str) -> str:
        """Remove the file's row; the store key of its upload (the caller deletes that)."""
        with self.db.session() as s:
            f = _load_file(s, file_id)
            s.execute(delete(File).where(File.id == file_id))
            return f.key


# ---------------------------------------------------------------------- in a session
# (shared with :mod:`.jobqueue`: the parts of a unit of work, never one of their own)
def load_job(s: Session, job_id: str) -> Job:
    """The job row (404 ``job_not_found``; a malformed id is not found either)."""
    require_id(job_id, "job", "job")
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"job '{job_id}' not found", code="job_not_found", param="job_id")
    return job


def add_event(s: Session, job: Job, type_: str, data: dict[str, Any],
              ts: float | None = None) -> None:
    """The job's next event (``seq`` from the row's counter)."""
    s.add(JobEvent(job_id=job.id, seq=job.next_seq, type=type_, created_at=int(ts or time.time()),
                   data=data))
    job.next_seq += 1


def finish(s: Session, job: Job, status: str, error: dict[str, Any] | None, message: str) -> None:
    """A final state, with its ``state`` event."""
    job.status = status
    job.error = error
    job.finished_at = now()
    add_event(s, job, "state", {"status": status, "message": message,
                                **({"error": error} if error else {})})


def _page(s: Session, limit: int, after: str | None,
          status: str | None) -> tuple[list[Job], bool]:
    """Jobs newest first, after the job ``after`` (cursor), and whether more follow."""
    q: Select[Job] = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
    if status:
        q = q.where(Job.status == status)
    if after:
        cur = load_job(s, after)
        q = q.where((Job.created_at < cur.created_at) |
                    ((Job.created_at == cur.created_at) & (Job.id < cur.id)))
    rows = list(s.scalars(q.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _load_file(s: Session, file_id: str) -> File:
    require_id(file_id, "file", "file")
    f = s.get(File, file_id)
    if f is None:
        raise NotFound(f"file '{file_id}' not found", code="file_not_found", param="file_id")
    return f
