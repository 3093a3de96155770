"""slice predictions: pack, the stored object holding the slice's image and viewing copy

NULL for slices stored before packs (their per-slice files are read instead)
and for slices that could not be decoded (storage/packs.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 09:30:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('slice_predictions', sa.Column('pack', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('slice_predictions') as batch:
        batch.drop_column('pack')
