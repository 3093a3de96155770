"""jobs: index (owner, status) for the per-owner active-job count of every submit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 03:10:00
"""

from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_owner_status', 'jobs', ['owner', 'status'])


def downgrade() -> None:
    op.drop_index('ix_jobs_owner_status', table_name='jobs')
