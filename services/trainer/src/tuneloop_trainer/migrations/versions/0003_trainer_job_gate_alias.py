"""trainer: jobs.gate_alias (the alias the gateway's promotion gate moves for this job)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 11:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trainer_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gate_alias', sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trainer_jobs', schema=None) as batch_op:
        batch_op.drop_column('gate_alias')
