"""trainer: jobs.gpus (multi-GPU jobs under torchrun)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 15:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trainer_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gpus', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('trainer_jobs', schema=None) as batch_op:
        batch_op.drop_column('gpus')
