"""dataset service: datasets, leases, synthetic jobs and rows

Revision ID: 0001_dataset
Revises:
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_dataset"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_index("ix_datasets_created_at", "datasets", ["created_at"])
    op.create_table(
        "dataset_leases",
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name="fk_dataset_leases_dataset_id_datasets"),
        sa.PrimaryKeyConstraint("dataset_id", "holder", name="pk_dataset_leases"),
    )
    op.create_table(
        "synth_jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.Integer(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_synth_jobs"),
    )
    op.create_index("ix_synth_jobs_status", "synth_jobs", ["status"])
    op.create_index("ix_synth_jobs_created_at", "synth_jobs", ["created_at"])
    op.create_table(
        "synth_rows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["synth_jobs.id"],
                                name="fk_synth_rows_job_id_synth_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_synth_rows"),
        sa.UniqueConstraint("job_id", "digest", name="uq_synth_rows_job_digest"),
    )
    op.create_index("ix_synth_rows_job_id", "synth_rows", ["job_id"])


def downgrade() -> None:
    op.drop_table("synth_rows")
    op.drop_table("synth_jobs")
    op.drop_table("dataset_leases")
    op.drop_table("datasets")
