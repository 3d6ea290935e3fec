"""Captured traffic in the database (``gateway_captures``): rows written by the capture worker
(with retention), the users' feedback, the review queue and publication."""

from __future__ import annotations

import builtins
import time
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound, Unprocessable
from tuneloop.offload import offloaded

from ..db import Capture
from ..flywheel.answers import training_answer

FILTERS = ("status", "model", "served_model", "key_id", "dataset_id")


class CaptureRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the capture worker ----------------------------------------------------------------
    @offloaded
    def add(self, rows: builtins.list[Capture], *, cutoff: int, max_rows: int) -> int | None:
        """Store ``rows``; when the table then holds more than ``max_rows``, apply retention
        (:meth:`prune`) in the same unit of work. Returns how many rows retention removed, or
        None when it did not run."""
        with self.db.session() as s:
            s.add_all(rows)
            s.flush()
            if (s.scalar(select(func.count()).select_from(Capture)) or 0) <= max_rows:
                return None
            return _prune(s, cutoff, max_rows)

    @offloaded
    def prune(self, *, cutoff: int, max_rows: int) -> int:
        """Retention: rows created before ``cutoff``, then the oldest over ``max_rows``.
        Returns how many rows went."""
        with self.db.session() as s:
            return _prune(s, cutoff, max_rows)

    # -- feedback and review -----------------------------------------------------------------
    @offloaded
    def feedback(self, response_id: str, key_id: str | None, rating: str | None,
                 correction: str | None, comment: str | None) -> Capture | None:
        """Store feedback on the newest capture of ``response_id`` (made with ``key_id``; None:
        any key); None when there is none."""
        with self.db.session() as s:
            q = select(Capture).where(Capture.response_id == response_id)
            if key_id is not None:
                q = q.where(Capture.key_id == key_id)
            row = s.scalars(q.order_by(Capture.created_at.desc()).limit(1)).first()
            if row is None:
                return None
            row.rating, row.correction, row.comment = rating, correction, comment
            row.feedback_at = int(time.time())
            return row

    @offloaded
    def page(self, filters: dict[str, Any], offset: int,
             limit: int) -> tuple[builtins.list[Capture], int]:
        """Captures matching ``filters``, newest first (``limit`` from ``offset``), and how many
        match in all."""
        with self.db.session() as s:
            q = select(Capture)
            for col in FILTERS:
                if filters.get(col) is not None:
                    q = q.where(getattr(Capture, col) == filters[col])
            rating = filters.get("rating")
            if rating == "none":
                q = q.where(Capture.rating.is_(None))
            elif rating is not None:
                q = q.where(Capture.rating == rating)
            if filters.get("corrected") is not None:
                q = q.where(Capture.correction.is_not(None) if filters["corrected"]
                            else Capture.correction.is_(None))
            if filters.get("since") is not None:
                q = q.where(Capture.created_at >= filters["since"])
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = list(s.scalars(q.order_by(Capture.created_at.desc(), Capture.id)
                                  .offset(offset).limit(limit)))
        return rows, total

    @offloaded
    def get(self, capture_id: str) -> Capture:
        with self.db.session() as s:
            row = s.get(Capture, capture_id)
            if row is None:
                raise NotFound(f"capture '{capture_id[:80]}' not found", code="capture_not_found",
                               param="id")
            return row

    @offloaded
    def review(self, accept: builtins.list[str], reject: builtins.list[str],
               edit: builtins.list[dict[str, str]]) -> None:
        """Accept, reject or edit (= accept with this answer) captures, all or nothing: every
        one must exist, none may be published, and an accepted one needs an answer to train on
        (:func:`..flywheel.answers.training_answer`)."""
        ids = accept + reject + [e["id"] for e in edit]
        now = int(time.time())
        with self.db.session() as s:
            rows = {r.id: r for r in s.scalars(select(Capture).where(Capture.id.in_(ids)))}
            missing = [i for i in ids if i not in rows]
            if missing:
                raise NotFound(f"captures not found: {', '.join(missing[:10])}",
                               code="capture_not_found", details={"ids": missing[:100]})
            published = [i for i in ids if rows[i].dataset_id]
            if published:
                raise Conflict(f"captures already published: {', '.join(published[:10])}",
                               code="capture_published", details={"ids": published[:100]})
            for e in edit:
                rows[e["id"]].edited_output = e["output"]
            unanswered = [i for i in accept if training_answer(rows[i]) is None]
            if unanswered:
                raise Unprocessable(
                    "a thumbs-down answer without a correction cannot be accepted as is: edit it "
                    f"(edit: [{{id, output}}]) or reject it: {', '.join(unanswered[:10])}",
                    code="capture_needs_answer", details={"ids": unanswered[:100]})
            for i in accept + [e["id"] for e in edit]:
                rows[i].status, rows[i].reviewed_at = "accepted", now
            for i in reject:
                rows[i].status, rows[i].reviewed_at = "rejected", now

    # -- publication -------------------------------------------------------------------------
    @offloaded
    def publishable(self, ids: builtins.list[str] | None) -> builtins.list[Capture]:
        """Accepted captures not yet in a dataset version (all, or those of ``ids``), oldest
        first."""
        with self.db.session() as s:
            q = select(Capture).where(Capture.status == "accepted", Capture.dataset_id.is_(None))
            if ids is not None:
                q = q.where(Capture.id.in_(ids))
            return list(s.scalars(q.order_by(Capture.created_at, Capture.id)))

    @offloaded
    def mark_published(self, ids: builtins.list[str], dataset_id: str) -> None:
        with self.db.session() as s:
            for row in s.scalars(select(Capture).where(Capture.id.in_(ids))):
                row.dataset_id = dataset_id


def _prune(s: Session, cutoff: int, max_rows: int) -> int:
    gone = _deleted(s, delete(Capture).where(Capture.created_at < cutoff))
    over = (s.scalar(select(func.count()).select_from(Capture)) or 0) - max_rows
    if over > 0:
        oldest = select(Capture.id).order_by(Capture.created_at, Capture.id).limit(over)
        ids = list(s.scalars(oldest))
        gone += _deleted(s, delete(Capture).where(Capture.id.in_(ids)))
    return gone


def _deleted(s: Any, statement: Any) -> int:
    """Rows a DELETE removed (its cursor's row count)."""
    result: CursorResult = s.execute(statement)
    return result.rowcount or 0
