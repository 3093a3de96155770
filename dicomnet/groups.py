"""Close study groups that went quiet, each into one study job of the existing pipeline.

A group closes ``DICOM_STUDY_TIMEOUT_S`` after its last instance, whatever the
associations did (a PACS may send one study over several). Its instances that
the model's series rules select (:mod:`ingest.series_rules`) become a zip
(stored, not compressed: DICOM pixel data is often compressed already), saved
as the job's upload exactly like an uploaded study; the job row, its audit
event and the queue message follow the API's order (commit, then publish).

Instances of a study arriving after its group closed open a new group: a new
job, a new version of the result (docs/dicom.md, "Versions").
"""

from __future__ import annotations

import io
import logging
import uuid
import zipfile
from datetime import timedelta
from typing import IO

from pydicom import dcmread
from sqlalchemy import delete, select

from api.queue import queue_job
from config import Settings
from db.dicom_models import DicomGroup, DicomInstance, GroupStatus
from db.models import AuditEvent, Job, JobKind, JobStatus, as_utc, utcnow
from db.session import session_scope, transaction_lock
from dicomnet.receive import group_lock, instance_file
from ingest.series_rules import FileFacts, SeriesRules, rules_for_model
from models.registry import ModelCard, Registry
from storage import Storage, open_storage, scratch_file

log = logging.getLogger(__name__)
HEADER_FILE = "dicom/header.dcm"
"""A job's copy of one received header without pixel data: the patient module for sending."""


def close_due(settings: Settings) -> list[str]:
    """Close every group quiet for DICOM_STUDY_TIMEOUT_S; returns the new job IDs."""
    cutoff = utcnow() - timedelta(seconds=settings.dicom_study_timeout_s)
    with session_scope(settings.database_url) as s:
        due = s.execute(
            select(DicomGroup.id, DicomGroup.called_ae, DicomGroup.study_uid).where(
                DicomGroup.status == GroupStatus.OPEN, DicomGroup.last_at < cutoff
            )
        ).all()
    jobs = []
    for group_id, called_ae, study_uid in due:
        job_id = close_group(settings, group_id, group_lock(called_ae, study_uid))
        if job_id:
            jobs.append(job_id)
    return jobs


def close_group(settings: Settings, group_id: str, lock: str) -> str | None:
    """Turn one quiet group into a queued job; None if it got an instance meanwhile."""
    card = model_card(settings)
    storage = open_storage(settings)
    job_id = str(uuid.uuid4())
    cutoff = utcnow() - timedelta(seconds=settings.dicom_study_timeout_s)
    with session_scope(settings.database_url) as s:
        transaction_lock(s, lock)  # no instance joins while the group closes
        group = s.get(DicomGroup, group_id)
        if group is None or group.status != GroupStatus.OPEN or as_utc(group.last_at) >= cutoff:
            return None
        rows = list(s.scalars(select(DicomInstance).where(DicomInstance.group_id == group_id)))
        chosen = _selected(rows, rules_for_model(card.raw, card.path, settings))
        job = _stored_job(storage, job_id, group, chosen, card)
        s.add(job)
        s.add(AuditEvent(owner=job.owner, action="dicom-receive", job_id=job_id))
        group.status = GroupStatus.CLOSED
        group.closed_at = utcnow()
        group.job_id = job_id
    log.info(
        "audit: owner=%s action=dicom-receive job=%s (group %s, version %d, %d of %d instances)",
        job.owner, job_id, group_id, group.version, len(chosen), len(rows),
    )  # fmt: skip
    storage.discard(group_id)  # the job's upload holds them now
    _queue(settings, job)
    return job_id


def model_card(settings: Settings) -> ModelCard:
    """The model of DICOM jobs: DICOM_MODEL, else DEFAULT_MODEL."""
    return Registry(settings.models_dirs).get(settings.dicom_model or settings.default_model)


def _selected(rows: list[DicomInstance], rules: SeriesRules) -> list[DicomInstance]:
    """The instances the model's series rules keep; all of them when none is kept.

    With none kept the job still runs, and fails saying why each series was
    skipped: a study is never dropped silently.
    """
    kept = [r for r in rows if rules.problem(_facts(r)) is None]
    return kept or rows


def _facts(row: DicomInstance) -> FileFacts:
    types = tuple(t for t in row.image_type.split("\\") if t)
    return FileFacts(row.modality, types, row.slice_thickness, row.orientation)


def _stored_job(
    storage: Storage,
    job_id: str,
    group: DicomGroup,
    rows: list[DicomInstance],
    card: ModelCard,
) -> Job:
    """Write the job's upload (a zip of the instances) and header copy; the unsaved row."""
    with scratch_file() as (f, _path):
        first = _write_zip(f, storage, group.id, rows)
        f.seek(0)
        stored = storage.save(job_id, "study.zip", f)
    if first is not None:
        storage.put(job_id, HEADER_FILE, _header_only(first))
    return Job(
        id=job_id,
        kind=JobKind.STUDY,
        owner=group.owner,
        model_name=card.name,
        model_version=card.version,
        upload_key=stored.key,
        upload_bytes=stored.size,
        status=JobStatus.QUEUED,
        warnings=[],
    )


def _write_zip(
    f: IO[bytes], storage: Storage, group_id: str, rows: list[DicomInstance]
) -> bytes | None:
    """Zip members ``<n>.dcm`` (no names from the headers); returns the first file's bytes."""
    first = None
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for n, row in enumerate(rows, 1):
            data = storage.get(group_id, instance_file(row.name))
            if data is None:
                log.warning("dicom: group %s lost the file of instance %d", group_id, row.id)
                continue
            zf.writestr(f"{n:06d}.dcm", data)
            first = first or data
    return first


def _header_only(data: bytes) -> bytes:
    """The file without its pixel data (the patient and study modules stay)."""
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _queue(settings: Settings, job: Job) -> None:
    """Publish the committed job; a broker failure leaves it queued for the sweeper.

    The worker's sweeper republishes queued jobs missing from the broker
    (worker/sweeper.py, step 2), so the study is not lost.
    """
    try:
        queue_job(settings, job.id, job.kind, job.model_name)
    except Exception as exc:  # broker down: the sweeper publishes it later
        log.warning("dicom: job %s not published (%s); the sweeper will", job.id, exc)


def forget_deleted(settings: Settings) -> int:
    """Drop closed groups (and their instance rows) whose job was deleted."""
    with session_scope(settings.database_url) as s:
        gone = select(Job.id)
        result = s.execute(
            delete(DicomGroup).where(
                DicomGroup.status == GroupStatus.CLOSED, DicomGroup.job_id.not_in(gone)
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)
