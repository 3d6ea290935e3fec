"""Eval runs in the database (``gateway_eval_runs``): stored before they start and when they
end, with their report and per-example samples."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from tuneloop.db import Database
from tuneloop.errors import NotFound
from tuneloop.offload import offloaded

from ..db import EvalRun
from ..leases import WorkLease
from .leases import no_live_owner, renew


class EvalRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    @offloaded
    def recover(self, lease: WorkLease, *, at_start: bool = False) -> int:
        """Fail (interrupted) the runs left ``running`` by a process that stopped: their
        heartbeat is older than the lease or, ``at_start``, this replica's previous process ran
        them. Runs of live processes (other replicas) are left alone. Returns how many."""
        with self.db.session() as s:
            rows = list(s.scalars(select(EvalRun).where(
                EvalRun.status == "running", no_live_owner(EvalRun, lease, at_start))))
            for r in rows:
                r.status = "failed"
                r.error = {"code": "interrupted",
                           "message": "the gateway process running it stopped during the run"}
                r.finished_at = int(time.time())
        return len(rows)

    @offloaded
    def heartbeat(self, lease: WorkLease) -> int:
        """Renew this process's running runs; returns how many."""
        with self.db.session() as s:
            return renew(s, EvalRun, "running", lease)

    @offloaded
    def add(self, row: EvalRun) -> None:
        with self.db.session() as s:
            s.add(row)

    @offloaded
    def finish(self, run_id: str, status: str, report: dict[str, Any] | None,
               samples: list[dict[str, Any]] | None, error: dict[str, Any] | None,
               duration: float) -> bool:
        """Store how a run ended; False when there is no such run."""
        with self.db.session() as s:
            row = s.get(EvalRun, run_id)
            if row is None:
                return False
            row.status, row.report, row.samples, row.error = status, report, samples, error
            row.finished_at = int(time.time())
            row.duration_s = round(duration, 3)
            return True

    @offloaded
    def get(self, run_id: str) -> EvalRun:
        with self.db.session() as s:
            row = s.get(EvalRun, run_id)
        if row is None:
            raise NotFound(f"eval '{run_id[:80]}' not found", code="eval_not_found", param="id")
        return row

    @offloaded
    def page(self, limit: int, offset: int) -> list[EvalRun]:
        """Runs, newest first: ``limit`` from ``offset``."""
        with self.db.session() as s:
            q = (select(EvalRun).order_by(EvalRun.created_at.desc(), EvalRun.id)
                 .offset(offset).limit(limit))
            return list(s.scalars(q))

    @offloaded
    def finished(self, *, other_than: str, limit: int = 50) -> list[EvalRun]:
        """The newest runs that ended with answers (succeeded or incomplete), ``other_than``
        excluded: where earlier generations may be reused from."""
        with self.db.session() as s:
            return list(s.scalars(
                select(EvalRun).where(EvalRun.status.in_(("succeeded", "incomplete")),
                                      EvalRun.id != other_than)
                .order_by(EvalRun.finished_at.desc()).limit(limit)))
