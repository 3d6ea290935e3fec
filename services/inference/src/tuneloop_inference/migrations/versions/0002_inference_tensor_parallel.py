"""inference: deployments.tensor_parallel_size (vLLM over several GPUs)

Revision ID: 0002_inference
Revises: 0001_inference
Create Date: 2026-11-29 15:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002_inference'
down_revision = '0001_inference'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inference_deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tensor_parallel_size', sa.Integer(), nullable=False,
                                      server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('inference_deployments', schema=None) as batch_op:
        batch_op.drop_column('tensor_parallel_size')
