"""captured production traffic (issue 18): gateway_captures, and the per-key capture opt-in

Revision ID: 0002_gateway_captures
Revises: 0001_gateway
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_gateway_captures"
down_revision = "0001_gateway"
branch_labels = None
depends_on = None

INDEXED = ("response_id", "key_id", "model", "served_model", "created_at", "rating", "status",
           "dataset_id")


def upgrade() -> None:
    op.add_column("gateway_api_keys",
                  sa.Column("capture", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "gateway_captures",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("response_id", sa.String(200), nullable=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(20), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("served_model", sa.String(300), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("finish_reason", sa.String(40), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("masked", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("rating", sa.String(8), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("feedback_at", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("edited_output", sa.Text(), nullable=True),
        sa.Column("reviewed_at", sa.Integer(), nullable=True),
        sa.Column("dataset_id", sa.String(64), nullable=True),
    )
    for col in INDEXED:
        op.create_index(f"ix_gateway_captures_{col}", "gateway_captures", [col])


def downgrade() -> None:
    op.drop_table("gateway_captures")
    with op.batch_alter_table("gateway_api_keys") as batch:
        batch.drop_column("capture")
