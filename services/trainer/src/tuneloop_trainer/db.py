"""Trainer tables (owned by this service only): jobs (the persistent queue), events, models, files."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, JSON, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tuneloop.db import NAMING

TERMINAL = ("succeeded", "failed", "cancelled")  # a job in one of these never changes again
ACTIVE = ("validating", "queued", "running")


class Base(DeclarativeBase):
    """The trainer service's tables: a metadata of their own (no other service's tables)."""

    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    __tablename__ = "trainer_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    dataset_id: Mapped[str] = mapped_column(String(64), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(String(16))
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # torchrun over N when >1
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    export: Mapped[dict[str, Any]] = mapped_column(JSON)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gate_alias: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the gateway's gate moves it
    model_id: Mapped[str] = mapped_column(String(64))  # assigned at creation, registered on success
    registered: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    queued_at: Mapped[float] = mapped_column(Float)  # FIFO order (re-queued jobs keep theirs)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    executor: Mapped[str | None] = mapped_column(String(16), nullable=True)
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # pid / k8s job name
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    next_seq: Mapped[int] = mapped_column(Integer, default=1)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16), default="api")  # api | openai
    training_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    callback_delivered: Mapped[bool] = mapped_column(Boolean, default=False)


class JobEvent(Base):
    __tablename__ = "trainer_job_events"

    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("trainer_jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class ModelVersion(Base):
    __tablename__ = "trainer_models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)


class File(Base):
    __tablename__ = "trainer_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(Text)  # raw upload kept in the store: files/<id>.jsonl
    created_at: Mapped[int] = mapped_column(BigInteger)


Index("ix_trainer_jobs_queue", Job.status, Job.queued_at)
