"""The DICOM node's routes: a job's SR, sending it on request, the destinations' health.

``GET /api/v1/jobs/<id>/sr`` serves the SR without patient identifiers (the
copy sent to a PACS gets the patient module at send time, dicomnet/outbox.py).
``POST /api/v1/jobs/<id>/export`` adds an outbox entry; the node's sender for
that destination delivers it. ``GET /api/v1/admin/dicom`` C-ECHOes every
destination (and the node itself) in parallel, each bounded by DICOM_TIMEOUT_S.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from apiflask import APIBlueprint, abort
from flask import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import context
from api.auth import Caller, auth, caller
from api.schemas import DicomStatusOut, ExportIn, ExportQueued
from db.dicom_models import DicomExport, DicomGroup, DicomResult, ExportStatus
from db.models import Job
from dicomnet.peers import Destination, destinations
from dicomnet.results import SR_FILE
from dicomnet.send import c_echo

bp = APIBlueprint("dicom", __name__, url_prefix="/api/v1", tag="DICOM")
SR_RESPONSES: dict[int | str, Any] = {
    200: {"description": "DICOM Part 10", "content": {"application/dicom": {}}},
    401: {"description": "no valid API key"},
    404: {"description": "no such job, or it did not come over DICOM"},
    409: {"description": "no SR yet"},
}


def _dicom_job(s: Session, job_id: str, who: Caller) -> tuple[Job, DicomResult | None]:
    """The caller's job from the DICOM path and its result row, else 404."""
    job = s.get(Job, job_id)
    if job is None or (job.owner != who.owner and not who.admin):
        abort(404, f"no job with id {job_id!r}")
    if s.scalar(select(DicomGroup.id).where(DicomGroup.job_id == job_id)) is None:
        abort(404, f"job {job_id!r} did not come over DICOM: it has no SR")
    return job, s.get(DicomResult, job_id)


@bp.get("/jobs/<job_id>/sr")
@bp.auth_required(auth)
@bp.doc(
    summary="The job's DICOM SR (TID 1500), without patient identifiers",
    responses=SR_RESPONSES,
)
def get_sr(job_id: str) -> Response:
    with context.session() as s:
        job, result = _dicom_job(s, job_id, caller())
        status = job.status
    if result is None or result.status != "built":
        abort(409, f"the job has no SR yet (it is {status}; an SR follows a succeeded job)")
    data = context.storage().get(job_id, SR_FILE)
    if data is None:
        abort(404, "the SR is gone (the job's retention ended)")
    response = Response(data, mimetype="application/dicom")
    response.headers["Content-Disposition"] = f'attachment; filename="{job_id}-sr.dcm"'
    return response


@bp.post("/jobs/<job_id>/export")
@bp.auth_required(auth)
@bp.input(ExportIn, arg_name="body")
@bp.output(ExportQueued, status_code=202)
@bp.doc(
    summary="Send the job's SR to a DICOM destination",
    description="The entry joins the destination's outbox; poll the job's `exports`.",
    responses=[202, 400, 401, 404, 409],
)
def export_sr(job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    name = body["destination"]
    known = destinations(context.settings())
    if name not in known:
        abort(400, f"unknown destination {name!r}; configured: {', '.join(known) or 'none'}")
    with context.session() as s:
        _job, result = _dicom_job(s, job_id, caller())
        if result is None or result.status != "built":
            abort(409, "the job has no SR to send (not ended, or it did not succeed)")
        entry = DicomExport(job_id=job_id, destination=name, status=ExportStatus.PENDING)
        s.add(entry)
        s.flush()
        return {
            "destination": entry.destination,
            "status": entry.status,
            "attempts": entry.attempts,
            "last_error": entry.last_error,
        }


@bp.get("/admin/dicom")
@bp.auth_required(auth)
@bp.output(DicomStatusOut)
@bp.doc(summary="The DICOM node and its destinations, with a live C-ECHO (admin keys only)")
def dicom_status() -> dict[str, Any]:
    if not caller().admin:
        abort(403, "needs an admin API key (python -m api.keys create NAME --admin)")
    settings = context.settings()
    node = Destination("node", settings.dicom_ae_title, settings.dicom_host, settings.dicom_port)
    targets = [node, *destinations(settings).values()]
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        answers = list(pool.map(lambda d: c_echo(settings, d), targets))
    rows = [
        {**asdict(d), "echo": ok, "detail": word}
        for d, (ok, word) in zip(targets, answers, strict=True)
    ]
    return {"node": rows[0], "destinations": rows[1:]}
