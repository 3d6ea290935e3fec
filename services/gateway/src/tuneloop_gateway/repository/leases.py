"""Work leases in SQL (``tuneloop_gateway.leases``): the condition of an eval run or a gate whose
owning process is gone, and the heartbeat of this process's work in progress."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, or_, update
from sqlalchemy.orm import Session

from ..leases import WorkLease


def no_live_owner(model: Any, lease: WorkLease, at_start: bool) -> ColumnElement[bool]:
    """Rows of ``model`` (``owner``, ``heartbeat_at``) that no live process holds: no owner
    (stored before leases existed), a heartbeat older than the lease, or, ``at_start``, an owner
    that is this replica's previous process (same replica id, another boot)."""
    dead = [model.owner.is_(None), model.heartbeat_at.is_(None),
            model.heartbeat_at < lease.stale_before()]
    if at_start:
        dead.append(and_(model.owner.startswith(lease.previous_boot_prefix(), autoescape=True),
                         model.owner != lease.owner))
    return or_(*dead)


def renew(s: Session, model: Any, status: str, lease: WorkLease) -> int:
    """Refresh the heartbeat of this process's rows of ``model`` still in ``status``; returns
    how many."""
    return s.execute(update(model).where(model.status == status, model.owner == lease.owner)
                     .values(heartbeat_at=lease.now())).rowcount  # type: ignore[attr-defined]
