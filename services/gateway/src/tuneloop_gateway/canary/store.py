"""Canaries in the database: the rows, their stored counts and events, and the API's view of
one. Every method is blocking (run in a thread by the callers on the event loop)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound

from ..db import Canary, Capture
from .live import Live


def canary_view(row: Canary, live: Live | None = None,
                quality: dict[str, Any] | None = None) -> dict[str, Any]:
    stats = {k: a.summary() for k, a in live.arms.items()} if live else dict(row.stats or {})
    return {"id": row.id, "object": "canary", "alias": row.alias, "stable": row.stable,
            "candidate": row.candidate, "model_id": row.model_id, "mode": row.mode,
            "weight": row.weight, "status": row.status, "limits": row.limits,
            "comparison": {**stats, "quality": quality or {}}, "events": row.events,
            "promotion_id": row.promotion_id, "note": row.note, "created_at": row.created_at,
            "finished_at": row.finished_at}


def event(kind: str, detail: str) -> dict[str, Any]:
    return {"at": int(time.time()), "event": kind, "detail": detail}


class CanaryStore:
    """The ``canaries`` table (and the captures' feedback per arm)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def running_rows(self) -> list[Canary]:
        with self.db.session() as s:
            rows = list(s.scalars(select(Canary).where(Canary.status == "running")))
            s.expunge_all()
            return rows

    def save_stats(self, dirty: list[tuple[str, dict[str, Any]]]) -> None:
        if not dirty:
            return
        with self.db.session() as s:
            for cid, stats in dirty:
                row = s.get(Canary, cid)
                if row is not None and row.status == "running":
                    row.stats = stats

    def insert(self, row: Canary) -> dict[str, Any]:
        with self.db.session() as s:
            if s.scalar(select(Canary).where(Canary.alias == row.alias,
                                             Canary.status == "running")) is not None:
                raise Conflict(f"alias '{row.alias}' already has a running canary",
                               code="canary_exists", param="alias")
            s.add(row)
            s.flush()
            return canary_view(row)

    def update(self, cid: str, weight: float | None, mode: str | None) -> dict[str, Any]:
        with self.db.session() as s:
            row = _running(s, cid)
            before = (row.mode, row.weight)
            row.weight = row.weight if weight is None else weight
            row.mode = mode or row.mode
            row.events = [*row.events, event("changed", f"{before[0]} {before[1]} -> "
                                             f"{row.mode} {row.weight}")]
            return canary_view(row)

    def finish(self, cid: str, status: str, reason: str, stats: dict | None = None,
               **fields: Any) -> dict[str, Any]:
        """End a running canary with ``status`` (a no-op on one already ended)."""
        with self.db.session() as s:
            row = _row(s, cid)
            if row.status == "running":
                row.status, row.finished_at = status, int(time.time())
                row.events = [*row.events, event(status, reason)]
                if stats is not None:
                    row.stats = stats
                for k, v in fields.items():
                    setattr(row, k, v)
            return canary_view(row)

    def get_running(self, cid: str) -> Canary:
        with self.db.session() as s:
            row = _running(s, cid)
            s.expunge(row)
            return row

    def get(self, cid: str) -> Canary:
        with self.db.session() as s:
            row = _row(s, cid)
            s.expunge(row)
            return row

    def list(self, *, status: str | None, alias: str | None, limit: int) -> list[Canary]:
        with self.db.session() as s:
            q = select(Canary).order_by(Canary.created_at.desc(), Canary.id).limit(limit)
            if status:
                q = q.where(Canary.status == status)
            if alias:
                q = q.where(Canary.alias == alias)
            rows = list(s.scalars(q))
            s.expunge_all()
            return rows

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


def _row(s: Any, cid: str) -> Canary:
    row = s.get(Canary, cid)
    if row is None:
        raise NotFound(f"canary '{cid[:80]}' not found", code="canary_not_found")
    return row


def _running(s: Any, cid: str) -> Canary:
    row = _row(s, cid)
    if row.status != "running":
        raise Conflict(f"canary {cid} is {row.status}", code="canary_not_running")
    return row
