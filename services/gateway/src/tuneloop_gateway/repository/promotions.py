"""Promotion decisions in the database (``gateway_promotions``): gates (one per job), manual
promotions and rollbacks, with their evidence."""

from __future__ import annotations

import builtins
import time
from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.errors import NotFound
from tuneloop.offload import offloaded

from ..db import Promotion
from ..leases import WorkLease
from .leases import no_live_owner, renew


class PromotionRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    @offloaded
    def recover(self, lease: WorkLease, *, at_start: bool = False) -> int:
        """Gates of a stored model version (no job) left ``evaluating`` by a process that
        stopped (heartbeat older than the lease or, ``at_start``, this replica's previous
        process) are marked failed (interrupted); returns how many. A job's gate is claimed
        again by the reconcile loop instead (:meth:`claim`)."""
        with self.db.session() as s:
            rows = list(s.scalars(select(Promotion).where(
                Promotion.status == "evaluating", Promotion.job_id.is_(None),
                no_live_owner(Promotion, lease, at_start))))
            for r in rows:
                r.status, r.finished_at = "failed", int(time.time())
                r.error = {"code": "interrupted",
                           "message": "the gateway process running it stopped during the gate"}
                r.reasons = ["gate could not run: the gateway process running it stopped"]
        return len(rows)

    @offloaded
    def heartbeat(self, lease: WorkLease) -> int:
        """Renew this process's gates in progress; returns how many."""
        with self.db.session() as s:
            return renew(s, Promotion, "evaluating", lease)

    async def claim(self, row: Promotion, lease: WorkLease) -> Promotion | None:
        """Store ``row`` as a gate in progress owned by this process, unless another live
        process holds the gate of the same job (then None). One conditional write: two
        replicas claiming at once get one winner (the unique ``job_id`` for a first gate, the
        owner condition for a re-run), on SQLite and PostgreSQL alike."""
        row.status, row.owner, row.heartbeat_at = "evaluating", lease.owner, lease.now()
        row.error, row.finished_at = None, None
        try:
            return await self._claim(row, lease)
        except IntegrityError:  # another replica inserted this job's gate first
            return None

    @offloaded
    def _claim(self, row: Promotion, lease: WorkLease) -> Promotion | None:
        with self.db.session() as s:
            held = (s.scalar(select(Promotion).where(Promotion.job_id == row.job_id))
                    if row.job_id is not None else s.get(Promotion, row.id))
            if held is None:
                s.add(row)
                s.flush()
                return row
            row.id = held.id
            values = {c: getattr(row, c) for c in (
                "kind", "status", "model_id", "alias", "reasons", "evidence", "error",
                "created_at", "finished_at", "owner", "heartbeat_at")}
            taken = s.execute(update(Promotion).where(
                Promotion.id == held.id,
                or_(Promotion.status != "evaluating", Promotion.owner == lease.owner,
                    no_live_owner(Promotion, lease, at_start=False))).values(**values))
            if taken.rowcount == 0:  # type: ignore[attr-defined]
                return None
            return s.get(Promotion, held.id, populate_existing=True)

    @offloaded
    def jobs_in(self, statuses: Collection[str]) -> set[str]:
        """Jobs whose gate is in one of ``statuses``."""
        with self.db.session() as s:
            return set(s.scalars(select(Promotion.job_id).where(
                Promotion.job_id.is_not(None), Promotion.status.in_(statuses))))

    @offloaded
    def by_job(self, job_id: str) -> Promotion | None:
        with self.db.session() as s:
            return s.scalar(select(Promotion).where(Promotion.job_id == job_id))

    @offloaded
    def upsert(self, row: Promotion) -> None:
        """Store ``row`` (a new decision, or a re-run gate over its earlier attempt)."""
        with self.db.session() as s:
            s.merge(row)

    @offloaded
    def update(self, pid: str, **fields: Any) -> Promotion:
        """Set ``fields`` on a decision."""
        with self.db.session() as s:
            row = _row(s, pid)
            for k, v in fields.items():
                setattr(row, k, v)
            return row

    @offloaded
    def finish(self, pid: str, status: str, *, reasons: builtins.list[str],
               evidence: dict | None = None, error: dict | None = None) -> Promotion:
        """Record a gate's decision (``evidence`` replaces the stored one when given)."""
        with self.db.session() as s:
            row = _row(s, pid)
            row.status, row.reasons, row.error = status, reasons, error
            if evidence is not None:
                row.evidence = evidence
            row.finished_at = int(time.time())
            return row

    @offloaded
    def get(self, pid: str) -> Promotion:
        with self.db.session() as s:
            return _row(s, pid)

    @offloaded
    def list(self, *, model_id: str | None = None, job_id: str | None = None,
             limit: int = 50) -> builtins.list[Promotion]:
        """Decisions, newest first, about a model version and/or a job."""
        with self.db.session() as s:
            q = select(Promotion).order_by(Promotion.created_at.desc(), Promotion.id).limit(limit)
            if model_id:
                q = q.where(Promotion.model_id == model_id)
            if job_id:
                q = q.where(Promotion.job_id == job_id)
            return list(s.scalars(q))


def _row(s: Session, pid: str) -> Promotion:
    row = s.get(Promotion, pid)
    if row is None:
        raise NotFound(f"promotion '{pid[:80]}' not found", code="promotion_not_found")
    return row
