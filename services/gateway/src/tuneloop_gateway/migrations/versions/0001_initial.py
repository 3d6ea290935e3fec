"""gateway initial tables: api keys, eval runs, promotions

Revision ID: 0001_gateway
Revises:
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_gateway"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(24), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("rate_limit_rpm", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.Integer(), nullable=True),
    )
    op.create_index("ix_gateway_api_keys_key_hash", "gateway_api_keys", ["key_hash"], unique=True)
    op.create_table(
        "gateway_eval_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("samples", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
    )
    op.create_index("ix_gateway_eval_runs_status", "gateway_eval_runs", ["status"])
    op.create_table(
        "gateway_promotions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True, unique=True),
        sa.Column("model_id", sa.String(64), nullable=True),
        sa.Column("alias", sa.String(200), nullable=False),
        sa.Column("candidate", sa.String(300), nullable=True),
        sa.Column("previous", sa.String(300), nullable=True),
        sa.Column("eval_id", sa.String(40), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.Integer(), nullable=True),
    )
    op.create_index("ix_gateway_promotions_status", "gateway_promotions", ["status"])
    op.create_index("ix_gateway_promotions_model_id", "gateway_promotions", ["model_id"])


def downgrade() -> None:
    op.drop_table("gateway_promotions")
    op.drop_table("gateway_eval_runs")
    op.drop_table("gateway_api_keys")
