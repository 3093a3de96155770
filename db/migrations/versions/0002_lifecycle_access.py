"""job life cycle and access: owner, heartbeat, cancel, idempotency, API keys, audit

Also widens slice_predictions.source to TEXT, so an archive member path of any
length is stored the same on PostgreSQL as on SQLite.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 21:50:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=128), nullable=False, server_default='local'))
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('cancel_requested', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint('uq_jobs_owner_idempotency', ['owner', 'idempotency_key'])
        batch_op.create_index('ix_jobs_owner_created', ['owner', 'created_at'], unique=False)

    with op.batch_alter_table('slice_predictions', schema=None) as batch_op:
        batch_op.alter_column('source', existing_type=sa.String(length=1024), type_=sa.Text(),
                              existing_nullable=False)

    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('admin', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_owner'), ['owner'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_owner'), ['owner'], unique=False)


def downgrade() -> None:
    op.drop_table('audit_events')
    op.drop_table('api_keys')
    with op.batch_alter_table('slice_predictions', schema=None) as batch_op:
        batch_op.alter_column('source', existing_type=sa.Text(), type_=sa.String(length=1024),
                              existing_nullable=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_owner_created')
        batch_op.drop_constraint('uq_jobs_owner_idempotency', type_='unique')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('cancel_requested')
        batch_op.drop_column('idempotency_key')
        batch_op.drop_column('owner')
