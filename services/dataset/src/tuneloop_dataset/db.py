"""Dataset service tables (owned by this service only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, JSON, MetaData, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tuneloop.db import NAMING


class Base(DeclarativeBase):
    """The dataset service's tables: a metadata of their own (no other service's tables)."""

    metadata = MetaData(naming_convention=NAMING)


class DatasetRow(Base):
    """One immutable dataset version (id = content hash of rows + split options)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="ready")
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    warnings: Mapped[list[Any]] = mapped_column(JSON)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class LeaseRow(Base):
    """Who uses a version (a training job, an eval run): delete is refused while leased."""

    __tablename__ = "dataset_leases"

    dataset_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("datasets.id"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[int] = mapped_column(Integer)


class SynthJobRow(Base):
    """A synthetic-data job; state is persisted so a restart loses nothing."""

    __tablename__ = "synth_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)
    failures: Mapped[list[Any]] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class SynthRowRow(Base):
    """One generated example of a draft, with its review decision."""

    __tablename__ = "synth_rows"
    __table_args__ = (UniqueConstraint("job_id", "digest", name="uq_synth_rows_job_digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("synth_jobs.id"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[int] = mapped_column(Integer)
