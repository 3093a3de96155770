"""dicom node: received instances, study groups, results (SR) and the export outbox

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-07 04:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dicom_groups',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('called_ae', sa.String(length=16), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('first_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id')
    )
    op.create_index('ix_dicom_groups_lookup', 'dicom_groups', ['called_ae', 'study_uid', 'status'])
    op.create_index(op.f('ix_dicom_groups_status'), 'dicom_groups', ['status'])
    op.create_table('dicom_instances',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('group_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('image_type', sa.String(length=255), nullable=False),
    sa.Column('slice_thickness', sa.Float(), nullable=True),
    sa.Column('orientation', sa.String(length=16), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['dicom_groups.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('group_id', 'sop_uid', name='uq_dicom_instance_sop')
    )
    op.create_index(op.f('ix_dicom_instances_group_id'), 'dicom_instances', ['group_id'])
    op.create_table('dicom_results',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=True),
    sa.Column('sop_uid', sa.String(length=64), nullable=True),
    sa.Column('images', sa.Integer(), nullable=False),
    sa.Column('built_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id')
    )
    op.create_table('dicom_exports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_dicom_exports_due', 'dicom_exports', ['destination', 'status', 'next_at'])
    op.create_index(op.f('ix_dicom_exports_job_id'), 'dicom_exports', ['job_id'])


def downgrade() -> None:
    op.drop_table('dicom_exports')
    op.drop_table('dicom_results')
    op.drop_table('dicom_instances')
    op.drop_table('dicom_groups')
