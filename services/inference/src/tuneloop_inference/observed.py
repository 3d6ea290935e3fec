"""Observed state: what this replica actually serves, written back for every replica to read.

Rows per replica: ``inference_replicas`` (heartbeat), ``inference_replica_deployments`` (engine
state here) and ``inference_replica_aliases`` (which version this replica routes an alias to
now). An alias counts as flipped only when every live replica reports the new version. Same
boundary rules as :mod:`.repository`: async methods, SQL in a worker thread via ``offloaded``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.offload import offloaded

from .db import Deployment, Replica, ReplicaAlias, ReplicaDeployment
from .repository import now

if TYPE_CHECKING:
    from .deployments import LocalDeployment


class ObservedState:
    def __init__(self, db: Database, replica: str) -> None:
        self.db = db
        self.replica = replica

    @offloaded
    def claim(self) -> None:
        """Register this replica; kill engines a crashed predecessor of it left behind."""
        with self.db.session() as s:
            for row in s.scalars(select(ReplicaDeployment).where(
                    ReplicaDeployment.replica_id == self.replica)):
                if row.pid:
                    _kill_orphan(row.pid)
            self._clear(s)
            s.merge(Replica(id=self.replica, last_seen=time.time(), started_at=now()))

    @offloaded
    def forget(self) -> None:
        """This replica leaves: its rows go (the desired state stays as it is)."""
        with self.db.session() as s:
            self._clear(s)
            s.execute(delete(Replica).where(Replica.id == self.replica))

    def _clear(self, s: Session) -> None:
        s.execute(delete(ReplicaDeployment).where(ReplicaDeployment.replica_id == self.replica))
        s.execute(delete(ReplicaAlias).where(ReplicaAlias.replica_id == self.replica))

    @offloaded
    def heartbeat(self) -> None:
        with self.db.session() as s:
            row = s.get(Replica, self.replica)
            if row is None:
                s.add(Replica(id=self.replica, last_seen=time.time(), started_at=now()))
            else:
                row.last_seen = time.time()

    async def deployment(self, loc: LocalDeployment, state: str, error: str | None = None, *,
                         aggregate: bool = False) -> None:
        """Report ``loc``'s state on this replica; ``aggregate`` also sets the deployment's own
        state (ready / failed) while it is still wanted."""
        engine = loc.serving_engine
        await self._write_deployment(loc.id, state, error, engine.url if engine else None,
                                     loc.engine.pid if loc.engine else None, loc.restarts,
                                     aggregate)

    @offloaded
    def _write_deployment(self, dep_id: str, state: str, error: str | None, url: str | None,
                          pid: int | None, restarts: int, aggregate: bool) -> None:
        with self.db.session() as s:
            row = s.get(Deployment, dep_id)
            if row is None:
                return
            s.merge(ReplicaDeployment(replica_id=self.replica, deployment_id=dep_id, state=state,
                                      url=url, pid=pid, restarts=restarts, error=error,
                                      updated_at=now()))
            if aggregate and row.desired == "serving":
                row.state, row.error, row.updated_at = state, error, now()

    async def aliases(self, routed: list[tuple[str, str]]) -> None:
        """This replica now routes each (alias, served name) pair so (no hop for none)."""
        if routed:
            await self._write_aliases(routed)

    @offloaded
    def _write_aliases(self, routed: Iterable[tuple[str, str]]) -> None:
        with self.db.session() as s:
            for alias, model in routed:
                s.merge(ReplicaAlias(replica_id=self.replica, alias=alias, model=model,
                                     updated_at=now()))


def _kill_orphan(pid: int) -> None:
    """Kill an engine process group left by a previous run of this replica (only ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return
    if b"tuneloop_inference.engines" in cmdline or b"vllm" in cmdline:
        with contextlib.suppress(OSError):
            os.killpg(pid, 9)
