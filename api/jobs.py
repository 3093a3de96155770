"""Jobs: submit an upload, poll its status, page through per-slice results."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from apiflask import APIBlueprint, abort
from flask import current_app, url_for
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage

from api.queue import enqueue_job
from api.schemas import JobIn, JobOut, ResultsOut, ResultsQuery
from api.serializers import job_to_dict, prediction_to_dict
from api.storage import discard, save_upload
from config import Settings
from db.models import Job, JobStatus, SlicePrediction, utcnow
from db.session import session_scope
from ingest import InvalidUpload, inspect_upload
from models.registry import ModelCard, Registry

log = logging.getLogger(__name__)
bp = APIBlueprint("jobs", __name__, url_prefix="/api/v1", tag="Jobs")


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _choose_model(name: str | None) -> ModelCard:
    """The requested model, or the default; 400 with the choices if unknown."""
    settings = _settings()
    registry = Registry(settings.models_dirs)
    try:
        return registry.get(name or settings.default_model)
    except KeyError:
        known = ", ".join(c.name for c in registry.cards()) or "none installed"
        abort(400, f"unknown model {name or settings.default_model!r}; available: {known}")


def _create_job(job_id: str, kind: str, card: ModelCard, key: str, size: int) -> Job:
    """Commit the job row before anything is enqueued (the worker reads it)."""
    with session_scope() as s:
        job = Job(
            id=job_id,
            kind=kind,
            model_name=card.name,
            model_version=card.version,
            upload_key=key,
            upload_bytes=size,
            status=JobStatus.QUEUED,
            warnings=[],
        )
        s.add(job)
    return job


@bp.post("/jobs")
@bp.input(JobIn, location="form_and_files", arg_name="form")
@bp.output(JobOut, status_code=202)
@bp.doc(summary="Submit a slice or a study", responses=[202, 400, 413, 503])
def submit_job(form: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Store the upload, record a job and queue it; answers at once with the job."""
    upload = form.get("file")
    if upload is None or not upload.filename:
        abort(400, "missing file: send the image or study archive as multipart field 'file'")
    card = _choose_model(form.get("model"))
    settings = _settings()
    job_id = str(uuid.uuid4())
    try:
        job = _store_and_record(job_id, upload, card, settings)
    except BaseException:
        discard(settings.storage_dir, job_id)  # a rejected or failed submit leaves nothing
        raise
    try:
        enqueue_job(job_id)
    except Exception as exc:  # broker down: say so, and keep the record honest
        log.exception("could not enqueue job %s", job_id)
        _fail_unqueued(job_id)
        abort(503, f"the job queue is unavailable ({type(exc).__name__}); please resubmit")
    location = url_for("jobs.get_job", job_id=job_id)
    return job_to_dict(job), 202, {"Location": location}


def _store_and_record(job_id: str, upload: FileStorage, card: ModelCard, settings: Settings) -> Job:
    """Save the upload, check it (4xx if it cannot be a slice or study), commit the job."""
    key, path = save_upload(settings.storage_dir, job_id, upload)
    try:
        kind = inspect_upload(path, upload.filename or "", settings.limits)
    except InvalidUpload as exc:
        abort(400, str(exc))
    except Exception as exc:  # a decoder choking on crafted input is still bad input
        log.warning("upload for job %s unreadable: %s", job_id, type(exc).__name__)
        abort(400, f"the upload could not be read ({type(exc).__name__})")
    return _create_job(job_id, kind, card, key, path.stat().st_size)


def _fail_unqueued(job_id: str) -> None:
    with session_scope() as s:
        job = s.get_one(Job, job_id)
        job.status, job.error, job.finished_at = JobStatus.FAILED, "could not be queued", utcnow()
    discard(_settings().storage_dir, job_id)


@bp.get("/jobs/<job_id>")
@bp.output(JobOut)
@bp.doc(summary="Poll a job", responses=[200, 404])
def get_job(job_id: str) -> dict[str, Any]:
    """Status, progress, and the study summary once the job has succeeded."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            abort(404, f"no job with id {job_id!r}")
        return job_to_dict(job)


@bp.get("/jobs/<job_id>/results")
@bp.input(ResultsQuery, location="query", arg_name="query")
@bp.output(ResultsOut)
@bp.doc(summary="Per-slice predictions, paginated", responses=[200, 404])
def get_results(job_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """Slices in order (series, then anatomical position); ``next`` links the next page."""
    limit = query["limit"] or _settings().results_page_size
    offset = query["offset"]
    with session_scope() as s:
        if s.get(Job, job_id) is None:
            abort(404, f"no job with id {job_id!r}")
        total = s.scalar(
            select(func.count())
            .select_from(SlicePrediction)
            .where(SlicePrediction.job_id == job_id)
        )
        rows = s.scalars(
            select(SlicePrediction)
            .where(SlicePrediction.job_id == job_id)
            .order_by(SlicePrediction.slice_index)
            .offset(offset)
            .limit(limit)
        ).all()
        items = [prediction_to_dict(r) for r in rows]
    more = offset + len(items) < (total or 0)
    nxt = (
        url_for("jobs.get_results", job_id=job_id, offset=offset + limit, limit=limit)
        if more
        else None
    )
    return {"items": items, "total": total or 0, "next": nxt}


@bp.delete("/jobs/<job_id>")
@bp.output({}, status_code=204)
@bp.doc(summary="Delete a job, its upload and its results", responses=[204, 404, 409])
def delete_job(job_id: str) -> tuple[str, int]:
    """Remove everything stored for a finished job (patient data hygiene)."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            abort(404, f"no job with id {job_id!r}")
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            abort(409, f"job is {job.status}; delete it once it has finished")
        s.delete(job)
    discard(_settings().storage_dir, job_id)
    return "", 204
