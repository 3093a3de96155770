"""jobs: input_name, the upload's name as its client sent it (as the privacy rules allow)

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-07 04:40:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('input_name', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('input_name')
