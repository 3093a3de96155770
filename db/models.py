"""SQLAlchemy 2.0 typed models.

The database, not the Celery result backend, is the source of truth for
polling: the API reads job progress and per-slice results from these tables.
No patient identifier is ever stored here (only DICOM UIDs, instance numbers
and positions, which link back to the PACS without naming anyone).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

if TYPE_CHECKING:
    from db.dicom_models import DicomExport


def utcnow() -> datetime:
    """Timezone-aware now, so SQLite and PostgreSQL agree on timestamps."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base shared by every table (Alembic reads its metadata)."""


class JobStatus(enum.StrEnum):
    """Life cycle of a job (db/lifecycle.py): queued -> running -> succeeded | failed | cancelled.

    A running job can go back to queued (handed back by a stopping worker, or
    requeued by the sweeper when its heartbeat stops).
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobKind(enum.StrEnum):
    """A single slice (image or one DICOM file) or a study archive (zip)."""

    IMAGE = "image"
    STUDY = "study"


class Job(Base):
    """One submitted upload and its study-level outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        # every submit counts the owner's active jobs (MAX_ACTIVE_JOBS_PER_OWNER):
        # without it that count read all of the owner's past jobs
        Index("ix_jobs_owner_status", "owner", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.QUEUED)
    kind: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(128), default="local")
    # SHA-256 (hex) of the client's Idempotency-Key, never the key itself (it may
    # hold anything, a patient's name included), and of the uploaded bytes: a
    # retry with the same key must carry the same upload (api/jobs.py).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    upload_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    upload_key: Mapped[str] = mapped_column(String(255))
    # the upload's name as the client sent it, only as ingest.privacy.input_name allows
    input_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    upload_bytes: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed_slices: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    predictions: Mapped[list[SlicePrediction]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )
    # DICOM node (db/dicom_models.py): where the job's SR went; the API's `exports`
    dicom_exports: Mapped[list[DicomExport]] = relationship(
        order_by="DicomExport.id", viewonly=True
    )


class SlicePrediction(Base):
    """The model's output (or the error) for one slice of a job."""

    __tablename__ = "slice_predictions"
    __table_args__ = (UniqueConstraint("job_id", "slice_index", name="uq_slice_job_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    slice_index: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    series_uid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slice_position: Mapped[float | None] = mapped_column(Float, nullable=True)
    frame: Mapped[int | None] = mapped_column(Integer, nullable=True)
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    # distance from the training data (models/ood.py) and whether it passed the card's threshold
    ood_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    out_of_distribution: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # where the slice's image and viewing copy are stored (storage/packs.py), not part
    # of its result: NULL for slices stored before packs, and for unreadable slices
    pack: Mapped[str | None] = mapped_column(String(64), nullable=True)

    job: Mapped[Job] = relationship(back_populates="predictions")


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEvent(Base):
    """Who submitted, cancelled or deleted which job, and when (never patient data)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


# The DICOM node's tables live in their own module; imported here so that
# Base.metadata (Alembic, tests/test_migrations.py) sees them.
from db import dicom_models  # noqa: E402,F401
