"""Canaries in the database (``gateway_canaries``): the rows, their stored counts and events,
and the feedback on each arm's captured answers."""

from __future__ import annotations

import builtins
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound
from tuneloop.offload import offloaded

from ..db import Canary, Capture

Counts = builtins.list[tuple[str, dict[str, Any]]]  # (canary id, each arm's summary)


def event(kind: str, detail: str) -> dict[str, Any]:
    """One entry of a canary's ``events``."""
    return {"at": int(time.time()), "event": kind, "detail": detail}


class CanaryRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    @offloaded
    def sync(self, dirty: Counts) -> builtins.list[Canary]:
        """Store the live counts of running canaries, then read every running canary (what the
        request path follows)."""
        with self.db.session() as s:
            _save_stats(s, dirty)
            return list(s.scalars(select(Canary).where(Canary.status == "running")))

    @offloaded
    def save_stats(self, dirty: Counts) -> None:
        """Store the live counts (of canaries still running)."""
        if not dirty:
            return
        with self.db.session() as s:
            _save_stats(s, dirty)

    @offloaded
    def insert(self, row: Canary) -> Canary:
        """Store a new canary, refused (``canary_exists``) while its alias has a running one."""
        with self.db.session() as s:
            if s.scalar(select(Canary).where(Canary.alias == row.alias,
                                             Canary.status == "running")) is not None:
                raise Conflict(f"alias '{row.alias}' already has a running canary",
                               code="canary_exists", param="alias")
            s.add(row)
        return row

    @offloaded
    def update(self, cid: str, weight: float | None, mode: str | None) -> Canary:
        """Change a running canary's weight and/or mode (an event says from what)."""
        with self.db.session() as s:
            row = _running(s, cid)
            before = (row.mode, row.weight)
            row.weight = row.weight if weight is None else weight
            row.mode = mode or row.mode
            row.events = [*row.events, event("changed", f"{before[0]} {before[1]} -> "
                                             f"{row.mode} {row.weight}")]
            return row

    @offloaded
    def finish(self, cid: str, status: str, reason: str, stats: dict | None = None, *,
               running_only: bool = False, **fields: Any) -> Canary:
        """End a running canary with ``status``: a no-op on one already ended, or refused
        (``canary_not_running``) when ``running_only``."""
        with self.db.session() as s:
            row = _running(s, cid) if running_only else _row(s, cid)
            if row.status == "running":
                row.status, row.finished_at = status, int(time.time())
                row.events = [*row.events, event(status, reason)]
                if stats is not None:
                    row.stats = stats
                for k, v in fields.items():
                    setattr(row, k, v)
            return row

    @offloaded
    def get(self, cid: str, *, running_only: bool = False) -> tuple[Canary, dict[str, Any]]:
        """A canary (refused unless it runs, when ``running_only``) and the feedback on each of
        its arms' captured answers (:func:`_quality`)."""
        with self.db.session() as s:
            row = _running(s, cid) if running_only else _row(s, cid)
            return row, _quality(s, cid)

    @offloaded
    def list(self, *, status: str | None, alias: str | None,
             limit: int) -> builtins.list[Canary]:
        """Canaries, newest first, filtered by status and alias."""
        with self.db.session() as s:
            q = select(Canary).order_by(Canary.created_at.desc(), Canary.id).limit(limit)
            if status:
                q = q.where(Canary.status == status)
            if alias:
                q = q.where(Canary.alias == alias)
            return list(s.scalars(q))


def _save_stats(s: Session, dirty: Counts) -> None:
    for cid, stats in dirty:
        row = s.get(Canary, cid)
        if row is not None and row.status == "running":
            row.stats = stats


def _quality(s: Session, cid: str) -> dict[str, Any]:
    """Feedback on each arm's captured answers (captured traffic only): how many were rated,
    thumbs up / down, corrected, and the share of thumbs up."""
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


def _row(s: Session, cid: str) -> Canary:
    row = s.get(Canary, cid)
    if row is None:
        raise NotFound(f"canary '{cid[:80]}' not found", code="canary_not_found")
    return row


def _running(s: Session, cid: str) -> Canary:
    row = _row(s, cid)
    if row.status != "running":
        raise Conflict(f"canary {cid} is {row.status}", code="canary_not_running")
    return row
