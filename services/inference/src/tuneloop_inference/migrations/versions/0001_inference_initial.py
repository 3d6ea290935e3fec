"""inference: deployments, aliases (+history), per-replica observed state

Revision ID: 0001_inference
Revises:
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_inference"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inference_deployments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(64), nullable=True),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("adapter_of", sa.String(128), nullable=True),
        sa.Column("engine", sa.String(16), nullable=False),
        sa.Column("desired", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Integer, nullable=False),
    )
    op.create_index("ix_inference_deployments_name", "inference_deployments", ["name"],
                    unique=True)
    op.create_table(
        "inference_aliases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("previous", sa.String(128), nullable=True),
        sa.Column("updated_at", sa.Integer, nullable=False),
    )
    op.create_table(
        "inference_alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alias", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("previous", sa.String(128), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("swap_seconds", sa.Float, nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
    )
    op.create_index("ix_inference_alias_history_alias", "inference_alias_history", ["alias"])
    op.create_table(
        "inference_replicas",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("started_at", sa.Integer, nullable=False),
    )
    op.create_table(
        "inference_replica_deployments",
        sa.Column("replica_id", sa.String(128), primary_key=True),
        sa.Column("deployment_id", sa.String(32),
                  sa.ForeignKey("inference_deployments.id", ondelete="CASCADE",
                                name="fk_inference_replica_deployments_deployment_id"),
                  primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("restarts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Integer, nullable=False),
    )
    op.create_table(
        "inference_replica_aliases",
        sa.Column("replica_id", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("inference_replica_aliases", "inference_replica_deployments",
                  "inference_replicas", "inference_alias_history", "inference_aliases",
                  "inference_deployments"):
        op.drop_table(table)
