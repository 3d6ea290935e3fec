"""Inference service tables (owned by this service only).

Desired state (what every replica converges on): ``inference_deployments`` (desired =
``serving`` | ``stopped``) and ``inference_aliases`` (+ ``inference_alias_history`` for
rollback). Observed state, one row per replica: ``inference_replicas`` (heartbeat),
``inference_replica_deployments`` (engine state on that replica) and
``inference_replica_aliases`` (which version that replica routes an alias to right now).
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tuneloop.db import NAMING


class Base(DeclarativeBase):
    """The inference service's tables: a metadata of their own (no other service's tables)."""

    metadata = MetaData(naming_convention=NAMING)


class Deployment(Base):
    __tablename__ = "inference_deployments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    adapter_of: Mapped[str | None] = mapped_column(String(128), nullable=True)
    engine: Mapped[str] = mapped_column(String(16))
    tensor_parallel_size: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    desired: Mapped[str] = mapped_column(String(16), default="serving")
    state: Mapped[str] = mapped_column(String(16), default="starting")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)


class Alias(Base):
    __tablename__ = "inference_aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    previous: Mapped[str | None] = mapped_column(String(128), nullable=True)
    updated_at: Mapped[int] = mapped_column(Integer)


class AliasHistory(Base):
    __tablename__ = "inference_alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(128))
    previous: Mapped[str | None] = mapped_column(String(128), nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    swap_seconds: Mapped[float | None] = mapped_column(nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)


class Replica(Base):
    __tablename__ = "inference_replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seen: Mapped[float] = mapped_column()
    started_at: Mapped[int] = mapped_column(Integer)


class ReplicaDeployment(Base):
    __tablename__ = "inference_replica_deployments"

    replica_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("inference_deployments.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[int] = mapped_column(Integer)


class ReplicaAlias(Base):
    __tablename__ = "inference_replica_aliases"

    replica_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[int] = mapped_column(Integer)
