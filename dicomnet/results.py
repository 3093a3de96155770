"""Results of DICOM jobs: find the jobs that ended, build their SR, fill the outbox.

The node polls the database (``DICOM_POLL_INTERVAL_S``) for jobs from the DICOM
path that ended without a result row, so it needs no hook in the worker. A
succeeded job gets its SR (stored as the job's ``dicom/sr.dcm``, free of patient
identifiers) and one outbox entry per destination; a failed or cancelled one a
result row saying so (``none``), and its header copy is deleted. An SR that
cannot be built is logged once and marked ``error``.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from config import Settings
from db.dicom_models import DicomExport, DicomGroup, DicomInstance, DicomResult, ExportStatus
from db.models import TERMINAL_STATUSES, Job, JobStatus
from db.session import session_scope
from dicomnet.groups import HEADER_FILE
from dicomnet.heatmaps import heatmap_images
from dicomnet.peers import destinations_for
from dicomnet.sr import Algorithm, SourceImage, build_sr, to_bytes
from storage import open_storage

log = logging.getLogger(__name__)
SR_FILE = "dicom/sr.dcm"


def image_file(n: int) -> str:
    """The storage name of the n-th heat-map image (from 1) of a job's result."""
    return f"dicom/sc{n}.dcm"


def build_due(settings: Settings) -> list[str]:
    """Build the SR of every ended DICOM job that has none yet; returns their job IDs."""
    with session_scope(settings.database_url) as s:
        due = list(
            s.scalars(
                select(Job.id)
                .join(DicomGroup, DicomGroup.job_id == Job.id)
                .outerjoin(DicomResult, DicomResult.job_id == Job.id)
                .where(Job.status.in_([str(t) for t in TERMINAL_STATUSES]))
                .where(DicomResult.job_id.is_(None))
            )
        )
    for job_id in due:
        try:
            build_result(settings, job_id)
        except Exception:  # a summary the SR cannot express: say so once, not every round
            log.exception("dicom: the SR of job %s could not be built", job_id)
            _mark(settings, job_id, "error")
    return due


def _mark(settings: Settings, job_id: str, status: str) -> None:
    with session_scope(settings.database_url) as s:
        if s.get(Job, job_id) is not None and s.get(DicomResult, job_id) is None:
            s.add(DicomResult(job_id=job_id, status=status, images=0))


def build_result(settings: Settings, job_id: str) -> None:
    """The SR and outbox entries of one ended job (once: the result row is the marker)."""
    storage = open_storage(settings)
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        group = s.scalar(select(DicomGroup).where(DicomGroup.job_id == job_id))
        if job is None or group is None or s.get(DicomResult, job_id) is not None:
            return
        if job.status != JobStatus.SUCCEEDED or not job.summary:
            s.add(DicomResult(job_id=job_id, status="none", images=0))
            storage.delete(job_id, HEADER_FILE)
            log.info("dicom: job %s ended %s, no SR", job_id, job.status)
            return
        rows = s.scalars(select(DicomInstance).where(DicomInstance.group_id == group.id))
        sources = [
            SourceImage(r.sop_uid, r.sop_class, r.series_uid, r.instance_number) for r in rows
        ]
        ds = build_sr(
            job.summary,
            group.study_uid,
            sources,
            Algorithm(job.model_name, job.model_version),
            group.version,
        )
        storage.put(job_id, SR_FILE, to_bytes(ds))
        images = []
        if settings.dicom_heatmap_images:
            images = heatmap_images(s, storage, job_id, job.summary, group.study_uid, group.version)
        for n, image in enumerate(images, 1):
            storage.put(job_id, image_file(n), to_bytes(image))
        s.add(
            DicomResult(
                job_id=job_id,
                status="built",
                series_uid=str(ds.SeriesInstanceUID),
                sop_uid=str(ds.SOPInstanceUID),
                images=len(images),
            )
        )
        names = destinations_for(settings, group.calling_ae)
        for name in names:
            s.add(DicomExport(job_id=job_id, destination=name, status=ExportStatus.PENDING))
    log.info("dicom: SR of job %s built, outbox: %s", job_id, ", ".join(names) or "none")
    if not names:
        storage.delete(job_id, HEADER_FILE)  # nobody to send the patient module to
