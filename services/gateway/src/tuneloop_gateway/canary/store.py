"""A canary as the API shows it (:func:`canary_view`), and the request path's way to end one
(:class:`CanaryStore`). The rows themselves are :class:`..repository.CanaryRepository`'s."""

from __future__ import annotations

from typing import Any

from ..db import Canary
from ..repository.canaries import CanaryRepository
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


class CanaryStore:
    """What the request path (:mod:`.traffic`) ends a canary through when it crosses a limit
    (a task of its own, so the request that crossed it does not wait for the write)."""

    def __init__(self, repo: CanaryRepository) -> None:
        self.repo = repo

    async def finish(self, cid: str, status: str, reason: str,
                     stats: dict | None = None) -> dict[str, Any]:
        """End a running canary with ``status`` (a no-op on one already ended)."""
        return canary_view(await self.repo.finish(cid, status, reason, stats))
