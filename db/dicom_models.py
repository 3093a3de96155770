"""Tables of the DICOM node (dicomnet/): received instances, study groups, results, outbox.

Only UIDs, numbers and header fields used for series selection are stored;
patient identifiers stay in the received files (storage/), never in a row.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from db.models import Base, utcnow


class GroupStatus(enum.StrEnum):
    """A group is ``open`` while instances arrive, ``closed`` once it became a job."""

    OPEN = "open"
    CLOSED = "closed"


class ExportStatus(enum.StrEnum):
    """An outbox entry: waiting (``pending``), being sent, ``delivered`` or finally ``failed``."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DicomGroup(Base):
    """The instances of one study received by one called AE, until the group closes.

    The group's ``id`` names the storage folder that holds the received files
    while it is open; ``job_id`` is set when the group has closed into a job.
    A study re-sent after its group closed opens a new group, a new ``version``.
    """

    __tablename__ = "dicom_groups"
    __table_args__ = (Index("ix_dicom_groups_lookup", "called_ae", "study_uid", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    called_ae: Mapped[str] = mapped_column(String(16))
    calling_ae: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(128))
    study_uid: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), index=True, default=GroupStatus.OPEN)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True, unique=True)


class DicomInstance(Base):
    """One received instance: where its file is, and what series selection reads."""

    __tablename__ = "dicom_instances"
    __table_args__ = (UniqueConstraint("group_id", "sop_uid", name="uq_dicom_instance_sop"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(
        ForeignKey("dicom_groups.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    sop_uid: Mapped[str] = mapped_column(String(64))
    sop_class: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    modality: Mapped[str] = mapped_column(String(16))
    image_type: Mapped[str] = mapped_column(String(255), default="")
    slice_thickness: Mapped[float | None] = mapped_column(Float, nullable=True)
    orientation: Mapped[str | None] = mapped_column(String(16), nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DicomResult(Base):
    """The SR built for a job from the DICOM path (``status`` ``none`` when the job failed)."""

    __tablename__ = "dicom_results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Secondary Capture heat-map images stored with it (``dicom/sc<n>.dcm``, n from 1)
    images: Mapped[int] = mapped_column(Integer, default=0)
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DicomExport(Base):
    """An outbox entry: one job's SR to one destination, with its retries."""

    __tablename__ = "dicom_exports"
    __table_args__ = (Index("ix_dicom_exports_due", "destination", "status", "next_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ExportStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
