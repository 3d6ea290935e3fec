"""The inference service's one data-access boundary: desired state (deployments, aliases).

Every method is ``async`` and runs its SQL in a worker thread (:func:`tuneloop.offload.offloaded`, the
one way this service leaves the event loop for blocking work); nothing else touches the
database. A method is one unit of work (one session, one thread hop): checks and the write they
guard happen in the same transaction.

Observed state (what each replica serves) has its own small boundary in :mod:`.observed`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound
from tuneloop.ids import new_id
from tuneloop.offload import offloaded

from .db import Alias, AliasHistory, Deployment, Replica, ReplicaAlias, ReplicaDeployment


def now() -> int:
    return int(time.time())


class DesiredState:
    """Deployments (``desired`` = serving | stopped) and aliases, shared by every replica."""

    def __init__(self, db: Database, kind: str) -> None:
        self.db = db
        self.kind = kind  # the engine kind new deployments are recorded with

    # ------------------------------------------------------------------ deployments
    @offloaded
    def find_by_name(self, name: str) -> Deployment | None:
        with self.db.session() as s:
            return s.scalars(select(Deployment).where(Deployment.name == name)).first()

    @offloaded
    def upsert_deployment(self, name: str, model_id: str | None, path: str | None,
                          adapter_of: str | None, tp: int = 1) -> tuple[Deployment, bool]:
        """Register ``name`` (or re-activate it: same weights only). Returns (row, created)."""
        with self.db.session() as s:
            row = s.scalars(select(Deployment).where(Deployment.name == name)).first()
            if row is None:
                row = Deployment(id=new_id("dep"), name=name, model_id=model_id, path=path,
                                 adapter_of=adapter_of, engine=self.kind, tensor_parallel_size=tp,
                                 desired="serving", state="starting", created_at=now(),
                                 updated_at=now())
                s.add(row)
                return row, True
            if (row.model_id, row.path, row.adapter_of) != (model_id, path, adapter_of):
                raise Conflict(f"served name '{name}' already names other weights; served "
                               "names are immutable (deploy under a new name)",
                               code="served_name_taken", param="name")
            if (row.tensor_parallel_size or 1) != tp:
                if row.desired == "serving":
                    raise Conflict(f"'{name}' is serving with tensor_parallel_size="
                                   f"{row.tensor_parallel_size}; delete it first to change that",
                                   code="deployment_conflict", param="tensor_parallel_size")
                row.tensor_parallel_size = tp
            if row.desired != "serving" or row.state == "failed":
                row.desired, row.state, row.error, row.updated_at = ("serving", "starting",
                                                                     None, now())
            return row, False

    @offloaded
    def load_deployment(self, ident: str) -> tuple[Deployment, list[ReplicaDeployment]]:
        """A deployment by id or served name, with what each replica reports for it."""
        with self.db.session() as s:
            return _load_deployment(s, ident)

    @offloaded
    def load_all_deployments(self) -> list[tuple[Deployment, list[ReplicaDeployment]]]:
        with self.db.session() as s:
            rows = list(s.scalars(select(Deployment).order_by(Deployment.created_at)))
            reps = list(s.scalars(select(ReplicaDeployment)))
        return [(r, [x for x in reps if x.deployment_id == r.id]) for r in rows]

    @offloaded
    def adapters_of(self, name: str) -> list[str]:
        """Served names of adapters attached to ``name`` that should still be served."""
        with self.db.session() as s:
            return _adapters_of(s, name)

    @offloaded
    def stop_deployment(self, ident: str) -> Deployment:
        """desired = stopped, refused (409 ``deployment_in_use``) while an alias points to it or
        runtime LoRA adapters live in its engine. The row stays (rollback re-activates it)."""
        with self.db.session() as s:
            row, _ = _load_deployment(s, ident)
            users = _aliases_pointing_to(s, row.name)
            if users:
                raise Conflict(f"deployment '{row.name}' is the target of alias(es) {users}; "
                               "move or delete the alias first", code="deployment_in_use",
                               param="id")
            adapters = _adapters_of(s, row.name)
            if adapters:
                raise Conflict(f"deployment '{row.name}' serves the LoRA adapter(s) {adapters}; "
                               "delete them first", code="deployment_in_use", param="id")
            _stop(row)
            return row

    @offloaded
    def retire_if_unused(self, name: str) -> Deployment | None:
        """Stop ``name`` (desired = stopped) unless an alias points to it or adapters live in
        its engine; the stopped row, or None if it stays."""
        with self.db.session() as s:
            if _aliases_pointing_to(s, name) or _adapters_of(s, name):
                return None
            row = s.scalars(select(Deployment).where(Deployment.name == name)).first()
            if row is not None:
                _stop(row)
            return row

    @offloaded
    def desired_state(self) -> tuple[list[Deployment], dict[str, str]]:
        """Every deployment row and alias -> served name: what the reconciler converges on."""
        with self.db.session() as s:
            deps = list(s.scalars(select(Deployment)))
            aliases = {a.name: a.model for a in s.scalars(select(Alias))}
        return deps, aliases

    # ------------------------------------------------------------------ aliases
    @offloaded
    def get_alias(self, alias: str) -> Alias | None:
        with self.db.session() as s:
            return s.get(Alias, alias)

    @offloaded
    def alias_tp(self, alias: str) -> int | None:
        """tensor_parallel_size of the deployment ``alias`` points to now (None: no alias)."""
        with self.db.session() as s:
            row = s.get(Alias, alias)
            if row is None:
                return None
            dep = s.scalars(select(Deployment).where(Deployment.name == row.model)).first()
            return dep.tensor_parallel_size if dep is not None and not dep.adapter_of else None

    @offloaded
    def write_alias(self, alias: str, model: str, previous: str | None, action: str) -> None:
        """Point ``alias`` to ``model`` (the flip every replica follows) + a history entry."""
        with self.db.session() as s:
            row = s.get(Alias, alias)
            if row is None:
                s.add(Alias(name=alias, model=model, previous=previous, updated_at=now()))
            else:
                row.model, row.updated_at = model, now()
                if previous != model:
                    row.previous = previous
            s.add(AliasHistory(alias=alias, model=model, previous=previous, action=action,
                               created_at=now()))

    @offloaded
    def record_swap_seconds(self, alias: str, seconds: float) -> None:
        with self.db.session() as s:
            last = s.scalars(select(AliasHistory).where(AliasHistory.alias == alias)
                             .order_by(AliasHistory.id.desc())).first()
            if last is not None:
                last.swap_seconds = round(seconds, 3)

    @offloaded
    def delete_alias(self, alias: str) -> bool:
        """Remove the alias and what replicas report for it; False if there was none."""
        with self.db.session() as s:
            if s.get(Alias, alias) is None:
                return False
            s.execute(delete(Alias).where(Alias.name == alias))
            s.execute(delete(ReplicaAlias).where(ReplicaAlias.alias == alias))
            return True

    @offloaded
    def alias_views(self, alias: str | None, stale_s: float) -> list[dict[str, Any]]:
        """The API view of one alias (or of all, by name): target, what each live replica
        routes it to, ``converged`` and the last 20 flips. One session for the whole list."""
        cutoff = time.time() - stale_s
        with self.db.session() as s:
            query = select(Alias).order_by(Alias.name)
            rows = list(s.scalars(query if alias is None else query.where(Alias.name == alias)))
            live = {r.id for r in s.scalars(select(Replica).where(Replica.last_seen >= cutoff))}
            return [_alias_view(s, row, live) for row in rows]


def _load_deployment(s: Session, ident: str) -> tuple[Deployment, list[ReplicaDeployment]]:
    row = s.get(Deployment, ident) or s.scalars(
        select(Deployment).where(Deployment.name == ident)).first()
    if row is None:
        raise NotFound(f"deployment '{ident[:80]}' not found", code="deployment_not_found",
                       param="id")
    reps = list(s.scalars(select(ReplicaDeployment).where(
        ReplicaDeployment.deployment_id == row.id)))
    return row, reps


def _adapters_of(s: Session, name: str) -> list[str]:
    return [d.name for d in s.scalars(select(Deployment).where(
        Deployment.adapter_of == name, Deployment.desired == "serving"))]


def _aliases_pointing_to(s: Session, name: str) -> list[str]:
    return [a.name for a in s.scalars(select(Alias).where(Alias.model == name))]


def _stop(row: Deployment) -> None:
    row.desired, row.state, row.updated_at = "stopped", "stopped", now()


def _alias_view(s: Session, row: Alias, live: set[str]) -> dict[str, Any]:
    observed = {r.replica_id: r.model for r in s.scalars(
        select(ReplicaAlias).where(ReplicaAlias.alias == row.name)) if r.replica_id in live}
    history = [{"model": h.model, "previous": h.previous, "action": h.action,
                "swap_seconds": h.swap_seconds, "created_at": h.created_at}
               for h in s.scalars(select(AliasHistory).where(AliasHistory.alias == row.name)
                                  .order_by(AliasHistory.id.desc()).limit(20))]
    converged = bool(live) and all(observed.get(r) == row.model for r in live)
    return {"id": row.name, "object": "alias", "model": row.model, "previous": row.previous,
            "updated_at": row.updated_at, "replicas": observed, "converged": converged,
            "history": history}
