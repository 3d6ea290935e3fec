"""canary releases and per-tenant keys (issue 18, items 4-5): gateway_canaries, the canary a
captured answer was routed by (canary_id, canary_arm), and the aliases a key is bound to

Revision ID: 0003_gateway_canaries
Revises: 0002_gateway_captures
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_gateway_canaries"
down_revision = "0002_gateway_captures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_canaries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("alias", sa.String(200), nullable=False),
        sa.Column("stable", sa.String(300), nullable=False),
        sa.Column("candidate", sa.String(300), nullable=False),
        sa.Column("model_id", sa.String(64), nullable=True),
        sa.Column("mode", sa.String(12), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("promotion_id", sa.String(40), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.Integer(), nullable=True),
    )
    op.create_index("ix_gateway_canaries_alias", "gateway_canaries", ["alias"])
    op.create_index("ix_gateway_canaries_status", "gateway_canaries", ["status"])
    with op.batch_alter_table("gateway_captures") as batch:
        batch.add_column(sa.Column("canary_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("canary_arm", sa.String(12), nullable=True))
    op.create_index("ix_gateway_captures_canary_id", "gateway_captures", ["canary_id"])
    with op.batch_alter_table("gateway_api_keys") as batch:
        batch.add_column(sa.Column("models", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gateway_api_keys") as batch:
        batch.drop_column("models")
    op.drop_index("ix_gateway_captures_canary_id", "gateway_captures")
    with op.batch_alter_table("gateway_captures") as batch:
        batch.drop_column("canary_arm")
        batch.drop_column("canary_id")
    op.drop_table("gateway_canaries")
