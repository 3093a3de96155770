"""jobs: store a hash of the Idempotency-Key, and the upload's SHA-256

A client-chosen Idempotency-Key may hold anything (a patient's name was seen),
so the column keeps its SHA-256 hex instead; keys stored earlier are hashed
here. ``upload_sha256`` lets a retry with the same key but other content be
refused (422) instead of silently answering the first job.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 04:30:00
"""

import hashlib

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('idempotency_key', sa.String))


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('upload_sha256', sa.String(length=64), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.idempotency_key).where(jobs.c.idempotency_key.is_not(None))
    ).all()
    for job_id, key in rows:
        digest = hashlib.sha256(key.encode()).hexdigest()
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(idempotency_key=digest))


def downgrade() -> None:
    # the keys themselves are gone for good; their hashes stay (they match no retry)
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('upload_sha256')
