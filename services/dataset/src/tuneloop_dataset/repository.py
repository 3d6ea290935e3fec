"""The dataset service's one data-access boundary: dataset versions and their leases
(:class:`DatasetRepository`), synthetic-data jobs and their draft rows (:class:`SynthRepository`).

Every method is ``async`` and runs its SQL in a worker thread (:func:`tuneloop.offload.offloaded`,
the one way this service leaves the event loop for blocking work); nothing else in the service
touches the database. A method is one unit of work (one session, one thread hop): checks and the
write they guard happen in the same transaction. Rows come back detached (the sessions do not
expire them on commit): :mod:`.service` and :mod:`.synthetic` shape the API's views from them.

Publishing and deleting a version move its artifacts inside the transaction: the service passes a
blocking callable (``place`` / ``unplace``) that runs in the same worker thread after the row is
written and before the commit, so the row and its files appear and disappear together, and the
unique id decides a race between two identical uploads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from tuneloop.offload import offloaded

from .db import DatasetRow, LeaseRow, SynthJobRow, SynthRowRow

#: a version and the holders of its leases (oldest lease first)
Stored = tuple[DatasetRow, list[str]]
#: a synthetic job and how many of its draft rows are pending, accepted and rejected
Job = tuple[SynthJobRow, dict[str, int]]
Messages = list[dict[str, str]]
FINISHED = ("succeeded", "failed", "cancelled")
REVIEW_STATES = ("pending", "accepted", "rejected")


class DatasetRepository:
    """Dataset versions (immutable rows, id = content hash) and who leases them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @offloaded
    def find(self, ds_id: str) -> Stored | None:
        """The version ``ds_id`` with its holders; None if there is none."""
        with self.db.session() as s:
            row = s.get(DatasetRow, ds_id)
            return None if row is None else (row, _holders(s, [ds_id])[ds_id])

    @offloaded
    def get(self, ds_id: str) -> Stored:
        """The version ``ds_id`` with its holders; 404 ``dataset_not_found`` if there is none."""
        with self.db.session() as s:
            return _require(s, ds_id), _holders(s, [ds_id])[ds_id]

    @offloaded
    def page(self, limit: int, offset: int) -> list[Stored]:
        """Versions, newest first: ``limit`` from ``offset``, with their holders."""
        with self.db.session() as s:
            rows = list(s.scalars(select(DatasetRow)
                                  .order_by(DatasetRow.created_at.desc(), DatasetRow.id)
                                  .offset(offset).limit(limit)))
            holders = _holders(s, [r.id for r in rows])
        return [(r, holders[r.id]) for r in rows]

    @offloaded
    def add(self, row: DatasetRow, place: Callable[[], None]) -> bool:
        """Insert the version and run ``place`` (it moves the artifacts into the store) before
        the commit. False, with nothing placed, when a version with this id exists: the loser of
        a race for identical content falls back to the winner's version."""
        try:
            with self.db.session() as s:
                s.add(row)
                s.flush()  # takes the write lock / unique index: losers fail here
                place()
        except IntegrityError:
            return False
        return True

    @offloaded
    def lease(self, ds_id: str, holder: str) -> list[str]:
        """Record that ``holder`` uses the version (idempotent); the holders after."""
        try:
            with self.db.session() as s:
                _require(s, ds_id)
                if s.get(LeaseRow, (ds_id, holder)) is None:
                    s.add(LeaseRow(dataset_id=ds_id, holder=holder, created_at=int(time.time())))
                    s.flush()
                return _holders(s, [ds_id])[ds_id]
        except IntegrityError:
            # a concurrent PUT of the same lease (idempotent) or the version vanished meanwhile
            with self.db.session() as s:
                _require(s, ds_id)
                return _holders(s, [ds_id])[ds_id]

    @offloaded
    def unlease(self, ds_id: str, holder: str) -> list[str]:
        """Drop ``holder``'s lease (404 ``lease_not_found`` if it holds none); the holders
        after."""
        with self.db.session() as s:
            _require(s, ds_id)
            lease = s.get(LeaseRow, (ds_id, holder))
            if lease is None:
                raise NotFound(f"dataset '{ds_id}' has no lease held by '{holder}'",
                               code="lease_not_found", param="holder")
            s.delete(lease)
            s.flush()
            return _holders(s, [ds_id])[ds_id]

    @offloaded
    def delete(self, ds_id: str, unplace: Callable[[], None]) -> None:
        """Delete the version, refused (409 ``dataset_in_use``) while it is leased; ``unplace``
        (it moves the artifacts out of the store) runs after the row is gone, before the
        commit."""
        with self.db.session() as s:
            # row lock on PostgreSQL: a lease being inserted (its FK check locks the row) either
            # commits first and is seen below, or waits and then fails (SQLite: one writer)
            row = s.get(DatasetRow, ds_id, with_for_update=True)
            if row is None:
                raise _not_found(ds_id)
            holders = sorted(s.scalars(select(LeaseRow.holder).where(LeaseRow.dataset_id == ds_id)))
            if holders:
                raise Conflict(f"dataset '{ds_id}' is in use by {', '.join(holders)}",
                               code="dataset_in_use", param="id", details={"in_use_by": holders})
            s.delete(row)
            s.flush()
            unplace()

    @offloaded
    def count(self) -> int:
        """How many versions are stored."""
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(DatasetRow)) or 0


class SynthRepository:
    """Synthetic-data jobs (their state, so a restart loses nothing) and their draft rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @offloaded
    def recover(self) -> int:
        """Mark jobs left queued/running by a stopped process as failed (interrupted); returns
        how many."""
        now = int(time.time())
        with self.db.session() as s:
            rows = list(s.scalars(select(SynthJobRow)
                                  .where(SynthJobRow.status.in_(("queued", "running")))))
            for job in rows:
                job.status, job.finished_at = "failed", now
                job.error = {"code": "interrupted", "message":
                             "the dataset service stopped while this job was running; the rows "
                             "generated before are kept in the draft and can be reviewed"}
        return len(rows)

    @offloaded
    def add(self, job: SynthJobRow) -> None:
        with self.db.session() as s:
            s.add(job)

    @offloaded
    def get(self, job_id: str) -> Job:
        """The job with its draft's row counts; 404 ``synthetic_job_not_found`` if none."""
        with self.db.session() as s:
            return _job(s, job_id), _row_counts(s, [job_id])[job_id]

    @offloaded
    def page(self, limit: int, offset: int) -> list[Job]:
        """Jobs, newest first: ``limit`` from ``offset``, with their draft's row counts."""
        with self.db.session() as s:
            jobs = list(s.scalars(select(SynthJobRow)
                                  .order_by(SynthJobRow.created_at.desc(), SynthJobRow.id)
                                  .offset(offset).limit(limit)))
            counts = _row_counts(s, [j.id for j in jobs])
        return [(j, counts[j.id]) for j in jobs]

    @offloaded
    def update(self, job_id: str, **fields: Any) -> None:
        """Set the job's ``fields`` (status, progress, failures, ...)."""
        with self.db.session() as s:
            job = s.get(SynthJobRow, job_id)
            for k, v in fields.items():
                setattr(job, k, v)

    @offloaded
    def finish(self, job_id: str, status: str, error: dict[str, Any] | None) -> None:
        """Record how the job ended, and when."""
        with self.db.session() as s:
            job = _job(s, job_id)
            job.status, job.error, job.finished_at = status, error, int(time.time())

    @offloaded
    def cancel(self, job_id: str, *, finish: bool) -> None:
        """Refuse (409 ``job_finished``) a job that already ended; with ``finish`` (no task of
        this process runs the job) mark it cancelled in the same transaction."""
        with self.db.session() as s:
            job = _job(s, job_id)
            if job.status in FINISHED:
                raise Conflict(f"synthetic job '{job_id}' is already {job.status}",
                               code="job_finished", param="id")
            if finish:
                job.status, job.error, job.finished_at = "cancelled", None, int(time.time())

    @offloaded
    def add_row(self, job_id: str, idx: int, messages: Messages, digest: bytes) -> None:
        """One generated example, pending review."""
        with self.db.session() as s:
            s.add(SynthRowRow(job_id=job_id, idx=idx, messages=messages, digest=digest.hex(),
                              status="pending", created_at=int(time.time())))

    @offloaded
    def rows(self, job_id: str, status: str | None, offset: int, limit: int) -> list[SynthRowRow]:
        """The draft's rows in generation order (only those with ``status`` if given)."""
        with self.db.session() as s:
            _job(s, job_id)
            q = select(SynthRowRow).where(SynthRowRow.job_id == job_id)
            if status:
                q = q.where(SynthRowRow.status == status)
            return list(s.scalars(q.order_by(SynthRowRow.idx).offset(offset).limit(limit)))

    @offloaded
    def review(self, job_id: str, accept: list[int], reject: list[int],
               accept_all_pending: bool) -> None:
        """Accept/reject draft rows by id (and, with ``accept_all_pending``, accept the rest
        that are pending); 400 for a row in both lists or not of this job, nothing changed."""
        with self.db.session() as s:
            _job(s, job_id)
            both = set(accept) & set(reject)
            if both:
                raise InvalidRequest(f"rows both accepted and rejected: {sorted(both)[:20]}",
                                     code="conflicting_review", param="accept")
            rows = {r.id: r for r in s.scalars(select(SynthRowRow)
                                               .where(SynthRowRow.job_id == job_id))}
            unknown = sorted((set(accept) | set(reject)) - set(rows))
            if unknown:
                raise InvalidRequest(f"unknown row ids for job {job_id}: {unknown[:20]}",
                                     code="unknown_rows", param="accept",
                                     details={"unknown": unknown[:100]})
            for rid in accept:
                rows[rid].status = "accepted"
            for rid in reject:
                rows[rid].status = "rejected"
            if accept_all_pending:
                for r in rows.values():
                    if r.status == "pending":
                        r.status = "accepted"

    @offloaded
    def accepted(self, job_id: str) -> list[Messages]:
        """The accepted rows' messages, in order, of a job that has ended: 409 ``job_running``
        before, 422 ``no_accepted_rows`` when there are none."""
        with self.db.session() as s:
            job = _job(s, job_id)
            if job.status not in FINISHED:
                raise Conflict(f"synthetic job '{job_id}' is still {job.status}; publish after "
                               "it ends", code="job_running", param="id")
            rows = [r.messages for r in s.scalars(
                select(SynthRowRow).where(SynthRowRow.job_id == job_id,
                                          SynthRowRow.status == "accepted")
                .order_by(SynthRowRow.idx))]
        if not rows:
            raise Unprocessable(f"synthetic job '{job_id}' has no accepted rows; review first",
                                code="no_accepted_rows", param="id")
        return rows

    @offloaded
    def set_dataset(self, job_id: str, dataset_id: str) -> None:
        """The version the job's accepted rows were published as."""
        with self.db.session() as s:
            job = s.get(SynthJobRow, job_id)
            if job is not None:
                job.dataset_id = dataset_id


def _not_found(ds_id: str) -> NotFound:
    return NotFound(f"dataset '{ds_id}' not found", code="dataset_not_found", param="id")


def _require(s: Session, ds_id: str) -> DatasetRow:
    row = s.get(DatasetRow, ds_id)
    if row is None:
        raise _not_found(ds_id)
    return row


def _holders(s: Session, ids: list[str]) -> dict[str, list[str]]:
    """Who holds each version's leases, oldest lease first."""
    out: dict[str, list[str]] = {i: [] for i in ids}
    if ids:
        for ds_id, holder in s.execute(select(LeaseRow.dataset_id, LeaseRow.holder)
                                       .where(LeaseRow.dataset_id.in_(ids))
                                       .order_by(LeaseRow.created_at, LeaseRow.holder)):
            out[ds_id].append(holder)
    return out


def _job(s: Session, job_id: str) -> SynthJobRow:
    job = s.get(SynthJobRow, job_id)
    if job is None:
        raise NotFound(f"synthetic job '{job_id}' not found", code="synthetic_job_not_found",
                       param="id")
    return job


def _row_counts(s: Session, ids: list[str]) -> dict[str, dict[str, int]]:
    """Each job's draft rows by review status (every status present, 0 if none)."""
    out = {i: dict.fromkeys(REVIEW_STATES, 0) for i in ids}
    if ids:
        for job_id, status, n in s.execute(select(SynthRowRow.job_id, SynthRowRow.status,
                                                  func.count())
                                           .where(SynthRowRow.job_id.in_(ids))
                                           .group_by(SynthRowRow.job_id, SynthRowRow.status)):
            if status in out[job_id]:
                out[job_id][status] = n
    return out
