"""slice predictions: out-of-distribution score and flag

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 21:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('slice_predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ood_score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('out_of_distribution', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('slice_predictions', schema=None) as batch_op:
        batch_op.drop_column('out_of_distribution')
        batch_op.drop_column('ood_score')
