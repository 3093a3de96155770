"""The export outbox: one queue per destination in SQL, capped exponential retries.

Each destination has its own sender (:func:`send_due`, one thread each in
dicomnet/service.py), so a destination that is down or slow never delays
another. An entry is claimed with a conditional UPDATE (``pending`` ->
``sending``), sent, then marked ``delivered``, or ``pending`` again after
``DICOM_RETRY_BASE_S * 2**(attempts-1)`` seconds (at most DICOM_RETRY_MAX_S),
or ``failed`` after DICOM_MAX_ATTEMPTS. Entries left ``sending`` by a killed
node go back to ``pending`` when it starts (:func:`recover`).

The SR sent carries the study's patient module, built at send time from the
job's header copy; once every export of the job is delivered, the copy is
deleted (else the job's retention deletes it with the job).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, select, update

from config import Settings
from db.dicom_models import DicomExport, DicomResult, ExportStatus
from db.models import Job, utcnow
from db.session import session_scope
from dicomnet.groups import HEADER_FILE
from dicomnet.peers import Destination
from dicomnet.results import SR_FILE, image_file
from dicomnet.send import SendError, c_store
from dicomnet.sr import with_patient
from storage import open_storage

log = logging.getLogger(__name__)
MAX_ERROR = 300


def enqueue(settings: Settings, job_id: str, destination: str) -> DicomExport:
    """A new outbox entry (POST /api/v1/jobs/<id>/export); sent as soon as its sender looks."""
    with session_scope(settings.database_url) as s:
        entry = DicomExport(job_id=job_id, destination=destination, status=ExportStatus.PENDING)
        s.add(entry)
    return entry


def recover(settings: Settings) -> int:
    """Entries a killed node left ``sending`` go back to ``pending``."""
    with session_scope(settings.database_url) as s:
        result = s.execute(
            update(DicomExport)
            .where(DicomExport.status == ExportStatus.SENDING)
            .values(status=ExportStatus.PENDING)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def send_due(settings: Settings, dest: Destination) -> int:
    """Send every due entry of one destination, oldest first; returns how many were tried."""
    tried = 0
    while (entry_id := _claim(settings, dest.name)) is not None:
        tried += 1
        _send_one(settings, dest, entry_id)
    return tried


def _claim(settings: Settings, destination: str) -> int | None:
    """The oldest due entry of ``destination``, now ``sending``; None when none is due."""
    with session_scope(settings.database_url) as s:
        entry_id = s.scalar(
            select(DicomExport.id)
            .where(
                DicomExport.destination == destination,
                DicomExport.status == ExportStatus.PENDING,
                DicomExport.next_at <= utcnow(),
            )
            .order_by(DicomExport.next_at, DicomExport.id)
            .limit(1)
        )
        if entry_id is None:
            return None
        claimed = s.execute(
            update(DicomExport)
            .where(DicomExport.id == entry_id, DicomExport.status == ExportStatus.PENDING)
            .values(status=ExportStatus.SENDING, attempts=DicomExport.attempts + 1)
        )
        return entry_id if getattr(claimed, "rowcount", 0) == 1 else None


def _send_one(settings: Settings, dest: Destination, entry_id: int) -> None:
    storage = open_storage(settings)
    with session_scope(settings.database_url) as s:
        entry = s.get(DicomExport, entry_id)
        job_id = entry.job_id if entry is not None else ""
        result = s.get(DicomResult, job_id) if job_id else None
        images = result.images if result is not None else 0
    names = [SR_FILE, *(image_file(n) for n in range(1, images + 1))]
    files = [storage.get(job_id, name) for name in names] if job_id else [None]
    try:
        if any(f is None for f in files):
            raise SendError("the job has no SR (deleted, or its job did not succeed)")
        header = storage.get(job_id, HEADER_FILE)
        c_store(settings, dest, [with_patient(f, header) for f in files if f is not None])
    except Exception as exc:  # a destination failing in any way is the outbox's business
        _retry_later(settings, entry_id, _message(exc))
        return
    _delivered(settings, entry_id, job_id)


def _message(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, SendError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR]


def _retry_later(settings: Settings, entry_id: int, error: str) -> None:
    with session_scope(settings.database_url) as s:
        entry = s.get(DicomExport, entry_id)
        if entry is None:
            return
        entry.last_error = error
        if entry.attempts >= settings.dicom_max_attempts:
            entry.status = ExportStatus.FAILED
            log.warning(
                "dicom: export %d to %s failed for good: %s", entry_id, entry.destination, error
            )
            return
        wait = min(
            settings.dicom_retry_base_s * 2 ** (entry.attempts - 1), settings.dicom_retry_max_s
        )
        entry.status = ExportStatus.PENDING
        entry.next_at = utcnow() + timedelta(seconds=wait)
        log.info(
            "dicom: export %d to %s: %s; retry in %gs", entry_id, entry.destination, error, wait
        )


def _delivered(settings: Settings, entry_id: int, job_id: str) -> None:
    """Mark it delivered; the last delivery of a job deletes its header copy."""
    with session_scope(settings.database_url) as s:
        s.execute(
            update(DicomExport)
            .where(DicomExport.id == entry_id)
            .values(status=ExportStatus.DELIVERED, delivered_at=utcnow(), last_error=None)
        )
        left = s.scalar(
            select(func.count())
            .select_from(DicomExport)
            .where(DicomExport.job_id == job_id, DicomExport.status != ExportStatus.DELIVERED)
        )
        exists = s.get(Job, job_id) is not None
    log.info("dicom: export %d delivered (job %s)", entry_id, job_id)
    if exists and not left:
        open_storage(settings).delete(job_id, HEADER_FILE)


def exports_of(settings: Settings, job_id: str) -> list[dict[str, object]]:
    """The job's exports as the API shows them."""
    with session_scope(settings.database_url) as s:
        rows = s.scalars(
            select(DicomExport).where(DicomExport.job_id == job_id).order_by(DicomExport.id)
        )
        return [export_dict(r) for r in rows]


def export_dict(row: DicomExport) -> dict[str, object]:
    return {
        "destination": row.destination,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
    }
