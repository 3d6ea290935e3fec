"""work leases (leases.py): the process running an eval run or a gate, and its heartbeat, so
replicas neither gate a job twice nor fail each other's live work

Revision ID: 0004_gateway_work_leases
Revises: 0003_gateway_canaries
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_gateway_work_leases"
down_revision = "0003_gateway_canaries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("gateway_eval_runs", "gateway_promotions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner", sa.String(160), nullable=True))
            batch.add_column(sa.Column("heartbeat_at", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in ("gateway_eval_runs", "gateway_promotions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("heartbeat_at")
            batch.drop_column("owner")
