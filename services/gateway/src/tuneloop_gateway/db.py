"""Gateway tables (owned by this service only): API keys, eval runs, promotion decisions,
captured production traffic, canary releases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Float, Integer, JSON, MetaData, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tuneloop.db import NAMING


class Base(DeclarativeBase):
    """The gateway service's tables: a metadata of their own (no other service's tables)."""

    metadata = MetaData(naming_convention=NAMING)


class ApiKey(Base):
    """An API key; only its SHA-256 is stored (the key itself is shown once)."""

    __tablename__ = "gateway_api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(24))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    capture: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # bound to these served names/aliases only (per-tenant); None: any model
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class EvalRun(Base):
    """One evaluation run: its request (keys redacted), status and full report."""

    __tablename__ = "gateway_eval_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    samples: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the process running it and when it last said so (leases.py)
    owner: Mapped[str | None] = mapped_column(String(160), nullable=True)
    heartbeat_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Promotion(Base):
    """A promotion decision (automatic gate, manual promote or rollback) with its evidence."""

    __tablename__ = "gateway_promotions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # gate | manual | rollback
    status: Mapped[str] = mapped_column(String(20), index=True)
    # pending | evaluating | promoted | rejected | failed | done
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    alias: Mapped[str] = mapped_column(String(200))
    candidate: Mapped[str | None] = mapped_column(String(300), nullable=True)
    previous: Mapped[str | None] = mapped_column(String(300), nullable=True)
    eval_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the process running the gate and when it last said so (leases.py)
    owner: Mapped[str | None] = mapped_column(String(160), nullable=True)
    heartbeat_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Capture(Base):
    """One captured generation (masked before it was written), its feedback and its review."""

    __tablename__ = "gateway_captures"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    response_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    endpoint: Mapped[str] = mapped_column(String(20))  # chat | completions
    model: Mapped[str] = mapped_column(String(300), index=True)  # what the client asked for
    served_model: Mapped[str | None] = mapped_column(String(300), nullable=True, index=True)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    output: Mapped[str] = mapped_column(Text)
    stream: Mapped[bool] = mapped_column(Boolean)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    latency_s: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    masked: Mapped[dict[str, int]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    rating: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)  # up | down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    feedback_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(12), index=True)  # pending | accepted | rejected
    edited_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    reviewed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    canary_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    canary_arm: Mapped[str | None] = mapped_column(String(12), nullable=True)  # stable|candidate|shadow


class Canary(Base):
    """A canary release of an alias: a weighted share of its traffic (or a mirror of it) sent to
    a candidate, compared live, rolled back on its own when the candidate crosses a limit."""

    __tablename__ = "gateway_canaries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    alias: Mapped[str] = mapped_column(String(200), index=True)
    stable: Mapped[str] = mapped_column(String(300))  # what the alias served when it started
    candidate: Mapped[str] = mapped_column(String(300))  # served name
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mode: Mapped[str] = mapped_column(String(12))  # weighted | shadow
    weight: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20), index=True)
    # running | rolled_back | promoted | stopped
    limits: Mapped[dict[str, Any]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    events: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    promotion_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
