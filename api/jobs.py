"""Jobs: submit, list, poll, page through results, cancel and delete, per owner.

Every route requires an API key (:mod:`api.auth`); a job that belongs to
another owner answers 404 exactly like a job that does not exist (no hint
that it does). Status changes go through :mod:`db.lifecycle`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar, cast

import numpy as np
from apiflask import APIBlueprint, abort
from apiflask.types import ResponsesObjectType
from flask import Response, current_app, request, url_for
from PIL import Image
from sqlalchemy import Select, bindparam, false, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from werkzeug.datastructures import FileStorage

from api import context, pages
from api.auth import Caller, auth, caller
from api.queue import queue_job
from api.schemas import (
    CancelOut,
    JobIn,
    JobList,
    JobListQuery,
    JobOut,
    JobWaitQuery,
    ResultsOut,
    ResultsQuery,
)
from api.serializers import job_to_dict, prediction_to_dict
from config.notices import wait_until
from db import ending, lifecycle
from db.models import (
    ACTIVE_STATUSES,
    AuditEvent,
    Job,
    JobKind,
    JobStatus,
    SlicePrediction,
    as_utc,
    utcnow,
)
from db.session import insert_new, transaction_lock
from db.slices import pack_names
from ingest import InvalidUpload, inspect_upload, upload_input_name
from ingest.views import deflated
from models.registry import ModelCard, Registry
from storage import packs, readable_path

log = logging.getLogger(__name__)
bp = APIBlueprint("jobs", __name__, url_prefix="/api/v1", tag="Jobs")
IDEMPOTENCY_HEADER = "Idempotency-Key"
T = TypeVar("T")
LIST_FILTERS = ("id", "status", "model", "since", "verdict", "ood", "q")
PNG_RESPONSES: ResponsesObjectType = {
    200: {"description": "PNG", "content": {"image/png": {}}},
    401: {},
    404: {},
}


def choose_model(name: str | None) -> ModelCard:
    """The requested model, or the default; 400 with the choices if unknown."""
    settings = context.settings()
    registry = Registry(settings.models_dirs)
    try:
        return registry.get(name or settings.default_model)
    except KeyError:
        known = ", ".join(c.name for c in registry.cards()) or "none installed"
        abort(400, f"unknown model {name or settings.default_model!r}; available: {known}")


def _owned(s: Session, job_id: str, who: Caller) -> Job:
    """The caller's job (any job for an admin key), else 404."""
    job = s.get(Job, job_id)
    if job is None or (job.owner != who.owner and not who.admin):
        abort(404, f"no job with id {job_id!r}")
    return job


def audit(s: Session, who: Caller, action: str, *job_ids: str) -> None:
    """Record who did what to which jobs (no patient data), in ``s``'s transaction; logged
    as well."""
    insert_new(s, [AuditEvent(owner=who.owner, action=action, job_id=j) for j in job_ids])
    for job_id in job_ids:
        log.info("audit: owner=%s action=%s job=%s", who.owner, action, job_id)


@bp.post("/jobs")
@bp.auth_required(auth)
@bp.input(JobIn, location="form_and_files", arg_name="form")
@bp.output(JobOut, status_code=202)
@bp.doc(
    summary="Submit a slice or a study",
    description=(
        "Answers 202 with the new job. With an `Idempotency-Key` header, a retry by the same "
        "owner with the same key and the same upload within IDEMPOTENCY_HOURS answers 200 "
        "with the original job instead of creating a second one; the same key with another "
        "upload answers 422. Only a hash of the key is stored."
    ),
    responses=[200, 202, 400, 401, 408, 413, 422, 429, 503],
)
def submit_job(form: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Store the upload, record a job and queue it; answers at once with the job."""
    who = caller()
    upload = form.get("file")
    if upload is None or not upload.filename:
        abort(400, "missing file: send the image or study archive as multipart field 'file'")
    key = _idempotency_key()
    digest = upload_sha256(upload) if key else None
    if key and (earlier := _replay(who, key, digest)) is not None:
        return earlier
    card = choose_model(form.get("model"))
    job_id = str(uuid.uuid4())
    try:
        job = _store_and_record(job_id, upload, card, who, key, digest)
    except BaseException:
        context.storage().discard(job_id)  # a rejected or failed submit leaves nothing
        raise
    if job.id != job_id:  # lost an idempotency race: the other request's job answers
        return created(job, 200)
    try:
        queue_job(context.settings(), job_id, job.kind, job.model_name)
    except Exception as exc:  # broker down or hung: say so, and keep the record honest
        _unqueued(job_id, type(exc).__name__)
    return created(job, 202)


def created(job: Job, status: int) -> tuple[dict[str, Any], int, dict[str, str]]:
    return job_to_dict(job), status, {"Location": url_for("jobs.get_job", job_id=job.id)}


def _idempotency_key() -> str | None:
    """The Idempotency-Key header, hashed (:func:`hashed_key`)."""
    return hashed_key(request.headers.get(IDEMPOTENCY_HEADER, ""), IDEMPOTENCY_HEADER)


def hashed_key(raw: str, what: str) -> str | None:
    """SHA-256 (hex) of an idempotency key: the key itself is never stored.

    Clients choose the key, and one was seen holding a patient's name. ``what``
    names where it came from, for the 400 of a key over 255 characters.
    """
    key = raw.strip()
    if len(key) > 255:
        abort(400, f"{what} must be at most 255 characters")
    return hashlib.sha256(key.encode()).hexdigest() if key else None


HASH_CHUNK = 1024 * 1024


def upload_sha256(upload: FileStorage) -> str:
    """SHA-256 (hex) of the spooled upload; the stream is left at its start.

    ``time.sleep(0)`` between chunks lets the other requests of a gevent
    worker run while a large upload is hashed (a thread switch under gthread).
    """
    digest = hashlib.sha256()
    upload.stream.seek(0)
    while chunk := upload.stream.read(HASH_CHUNK):
        digest.update(chunk)
        time.sleep(0)
    upload.stream.seek(0)
    return digest.hexdigest()


def _replay(
    who: Caller, key: str, digest: str | None
) -> tuple[dict[str, Any], int, dict[str, str]] | None:
    """The original answer for a retried submit, if this owner used ``key`` recently."""
    with context.session() as s:
        job = jobs_by_keys(s, who.owner, [key]).get(key)
        return None if job is None else created(same_upload(job, digest), 200)


def same_upload(job: Job, digest: str | None, what: str = IDEMPOTENCY_HEADER) -> Job:
    """``job`` if it was made from the same bytes, else 422 (the IETF draft's answer).

    A key reused for other content would otherwise silently lose that upload.
    """
    if job.upload_sha256 is not None and digest is not None and job.upload_sha256 != digest:
        abort(
            422,
            f"this {what} was already used for a different upload (job {job.id}); "
            "send a new key for new content",
        )
    return job


def jobs_by_keys(s: Session, owner: str, keys: Collection[str]) -> dict[str, Job]:
    """The owner's recent jobs with these (hashed) keys, by key, in one query.

    A job older than IDEMPOTENCY_HOURS lets go of its key (and is not returned).
    """
    if not keys:
        return {}
    q = select(Job).where(Job.owner == owner, Job.idempotency_key.in_(set(keys)))
    found = list(s.scalars(q.options(selectinload(Job.dicom_exports))))
    horizon = utcnow() - timedelta(hours=context.settings().idempotency_hours)
    expired = [job for job in found if as_utc(job.created_at) < horizon]
    for job in expired:
        job.idempotency_key = None
    if expired:
        s.flush()
    return {cast(str, job.idempotency_key): job for job in found if job not in expired}


def _store_and_record(
    job_id: str,
    upload: FileStorage,
    card: ModelCard,
    who: Caller,
    key: str | None,
    digest: str | None = None,
) -> Job:
    """Check the upload (4xx if it cannot be a slice or study), save it, commit the job."""
    job = stored_job(job_id, upload, card, who, key, digest)
    try:
        with context.session() as s:
            # one owner's count-then-insert at a time, across API processes and hosts
            transaction_lock(s, owner_lock(who.owner))
            _check_active_cap(s, who.owner, job.kind)
            insert_new(s, [job])
            audit(s, who, "submit", job_id)
    except IntegrityError:  # the same idempotency key committed a moment ago
        context.storage().discard(job_id)
        with context.session() as s:
            earlier = jobs_by_keys(s, who.owner, [key or ""]).get(key or "")
        if earlier is None:
            raise
        return same_upload(earlier, digest)
    return job


def owner_lock(owner: str) -> str:
    """The name of the lock under which an owner's jobs are counted and inserted."""
    return f"lungct-owner:{owner}"


def stored_job(
    job_id: str,
    upload: FileStorage,
    card: ModelCard,
    who: Caller,
    key: str | None,
    digest: str | None,
) -> Job:
    """Check the upload (4xx if it cannot be a slice or study), save it; the job, not committed.

    The check reads the upload where werkzeug put it (its temporary file, or an
    in-memory copy of a small one: storage ``readable_path``), so a rejected
    upload is never stored (README, Architecture, storage/).
    """
    with readable_path(cast(BinaryIO, upload.stream)) as path:
        kind = _inspect(job_id, path, upload.filename or "")
        input_name = upload_input_name(path, upload.filename or "", context.settings())
    stored = context.storage().save(job_id, upload.filename or "", upload.stream)
    return Job(
        id=job_id,
        kind=kind,
        owner=who.owner,
        idempotency_key=key,
        upload_sha256=digest,
        model_name=card.name,
        model_version=card.version,
        upload_key=stored.key,
        upload_bytes=stored.size,
        input_name=input_name,  # JOB LIST HOOK (issue 20): the list's input name
        status=JobStatus.QUEUED,
        warnings=[],
    )


def _inspect(job_id: str, path: Path, filename: str) -> str:
    """The job kind of an upload, or 400 with the reason."""
    try:
        return inspect_upload(path, filename, context.settings().limits)
    except InvalidUpload as exc:
        abort(400, str(exc))
    except Exception as exc:  # a decoder choking on crafted input is still bad input
        log.warning("upload for job %s unreadable: %s", job_id, type(exc).__name__)
        abort(400, f"the upload could not be read ({type(exc).__name__})")


def _check_active_cap(s: Session, owner: str, kind: str) -> None:
    """429 when this job would take the owner's queued and running work past
    MAX_ACTIVE_JOBS_PER_OWNER units.

    The cap counts what the work costs a worker: a study is one unit, and
    single images count one unit per MICROBATCH_MAX_JOBS of them (that many
    share a forward pass). So a folder of slices sent one by one is not
    refused long before a study would be, while one owner still cannot fill
    the queue in front of everyone else. ``Retry-After`` says when a unit is
    likely to be free, from how fast this owner's jobs ended lately.
    """
    active = active_counts(s, owner)
    if admissible(active, [kind]) == 0:
        message, retry_after = cap_refusal(s, owner, active)
        abort(429, message, headers={"Retry-After": str(retry_after)})


ACTIVE_BY_KIND = (
    select(Job.kind, func.count())
    .where(Job.owner == bindparam("owner"), Job.status.in_([str(a) for a in ACTIVE_STATUSES]))
    .group_by(Job.kind)
)


def active_counts(s: Session, owner: str) -> dict[str, int]:
    """The owner's queued and running jobs, counted by kind.

    Every submit asks, under the owner's lock: a statement built once, run on
    the session's connection, costs about a fifth of the CPU of building it and
    running it through the ORM each time (docs/benchmarks.md).
    """
    rows = s.connection().execute(ACTIVE_BY_KIND, {"owner": owner})
    return {str(kind): int(n) for kind, n in rows}


def admissible(active: dict[str, int], kinds: list[str]) -> int:
    """How many jobs of ``kinds``, taken in order, fit under the cap beside ``active``.

    A prefix: the first job that does not fit ends it, so a later, smaller job
    never overtakes an earlier one.
    """
    settings = context.settings()
    counts = dict(active)
    for n, kind in enumerate(kinds):
        counts[kind] = counts.get(kind, 0) + 1
        if _units(counts, settings.microbatch_max_jobs, whole=True) > (
            settings.max_active_jobs_per_owner
        ):
            return n
    return len(kinds)


def cap_refusal(s: Session, owner: str, active: dict[str, int]) -> tuple[str, int]:
    """The cap's 429 message for an owner with ``active`` work, and its Retry-After."""
    settings = context.settings()
    per_unit, cap = settings.microbatch_max_jobs, settings.max_active_jobs_per_owner
    message = (
        f"{active.get(JobKind.STUDY, 0)} studies and {active.get(JobKind.IMAGE, 0)} single "
        f"images of yours are queued or running (limit {cap} units of work, "
        f"MAX_ACTIVE_JOBS_PER_OWNER; a study is one unit, {per_unit} single images are "
        "one); retry after Retry-After seconds"
    )
    return message, _drain_wait_s(s, owner, per_unit)


def _counts_by_kind(s: Session, *where: Any) -> dict[str, int]:
    """Jobs matching ``where``, counted by kind (study, image)."""
    rows = s.execute(select(Job.kind, func.count()).where(*where).group_by(Job.kind)).all()
    return {str(kind): int(n) for kind, n in rows}


def _units(counts: dict[str, int], images_per_unit: int, whole: bool = False) -> float:
    """Units of work: a study is one, ``images_per_unit`` single images are one
    (``whole``: a started unit counts whole, as the cap does)."""
    images = counts.get(JobKind.IMAGE, 0) / images_per_unit
    return counts.get(JobKind.STUDY, 0) + (math.ceil(images) if whole else images)


DRAIN_WINDOW_S = 30
MAX_RETRY_AFTER_S = 30


def _drain_wait_s(s: Session, owner: str, images_per_unit: int) -> int:
    """Seconds until one unit of the owner's work is likely done, 1 to 30.

    From the units of work of this owner that ended in the last DRAIN_WINDOW_S;
    none (a long study running): 5 s, a poll's worth.
    """
    since = utcnow() - timedelta(seconds=DRAIN_WINDOW_S)
    ended = _counts_by_kind(s, Job.owner == owner, Job.finished_at >= since)
    units = _units(ended, images_per_unit)
    if units <= 0:
        return 5
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(DRAIN_WINDOW_S / units)))


def _unqueued(job_id: str, reason: str) -> NoReturn:
    """The queue did not take the job: record it as failed and answer 503.

    Only while it is still queued: a push that timed out here may still have
    reached Redis, and a worker that already started the job keeps it. The
    job lets go of its Idempotency-Key, so the client's retry with the same
    key makes a new job instead of replaying one that will never run.
    """
    fail_unqueued([job_id], reason)
    abort(503, queue_unavailable(reason))


def fail_unqueued(job_ids: list[str], reason: str) -> None:
    """Record jobs the queue did not take as failed, those still queued (see :func:`_unqueued`)."""
    log.warning("could not enqueue %d job(s) %s: %s", len(job_ids), job_ids[:3], reason)
    end = ending.failed("could not be queued", allowed=(JobStatus.QUEUED,))
    moved = ending.close(context.settings(), context.storage(), dict.fromkeys(job_ids, end))
    if moved:
        with context.session() as s:
            s.execute(update(Job).where(Job.id.in_(moved)).values(idempotency_key=None))


def queue_unavailable(reason: str) -> str:
    """The 503 message of a job the queue did not take."""
    return f"the job queue is unavailable ({reason}); please resubmit"


@bp.get("/jobs")
@bp.auth_required(auth)
@bp.input(JobListQuery, location="query", arg_name="query")
@bp.output(JobList)
@bp.doc(
    summary="List your jobs, newest first",
    description=(
        "Filters combine. `id` (repeated, at most 100) lists just those jobs. With `id` and "
        "`wait=S` the answer is held until one of them has ended (at once if one already "
        "has), or S seconds (at most JOB_WAIT_MAX_S) have passed: a client waiting for many "
        "jobs sends one request per round instead of one per job."
    ),
    responses=[200, 400, 401, 429],
)
def list_jobs(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's jobs (every owner's for an admin key), filtered and paginated."""
    who = caller()
    ids = query.get("id") or []
    if query["wait"] > 0 and not ids:
        abort(400, "wait needs id: name the jobs to wait for (id=...&id=..., at most 100)")

    if query["wait"] > 0 and not _one_ended(ids, who):
        wait_s = min(query["wait"], context.settings().job_wait_max_s)
        _held(ids, lambda: True if _one_ended(ids, who) else None, wait_s)
    return _jobs_page(query, who, ids)


def _one_ended(ids: list[str], who: Caller) -> bool:
    """Whether one of the caller's jobs named in ``ids`` has ended, or none of them exists.

    Judged on the named jobs alone, whatever other filters or page the listing has.
    """
    q = select(Job.status).where(Job.id.in_(ids))
    if not who.admin:
        q = q.where(Job.owner == who.owner)
    with context.session() as s:
        statuses = list(s.scalars(q))
    return not statuses or any(status not in ACTIVE_STATUSES for status in statuses)


def _jobs_page(query: dict[str, Any], who: Caller, ids: list[str]) -> dict[str, Any]:
    q = select(Job)
    if not who.admin:
        q = q.where(Job.owner == who.owner)
    if ids:
        q = q.where(Job.id.in_(ids))
    if query.get("status"):
        q = q.where(Job.status == query["status"])
    if query.get("model"):
        q = q.where(Job.model_name == query["model"])
    if query.get("since"):
        q = q.where(Job.created_at >= as_utc(query["since"]))
    q = _result_filters(q, query)
    # each job's DICOM exports in one query for the page, not one per job (N+1)
    q = q.options(selectinload(Job.dicom_exports))
    with context.session() as s:
        ordered = q.order_by(Job.created_at.desc(), Job.id)
        rows, nxt = pages.page(s, ordered, query, "jobs.list_jobs", LIST_FILTERS)
        items = [job_to_dict(j) for j in rows]
    return {"items": items, "next": nxt}


def _result_filters(q: Select[Any], query: dict[str, Any]) -> Select[Any]:
    """The job list's filters on results (issue 20): verdict, OOD flag, input name search.

    ``verdict`` and ``out_of_distribution`` are read from the stored summary (JSON:
    ``json_extract`` on SQLite, ``->>`` on PostgreSQL); a summary older than the
    verdict field answers by its label. The search matches the stored input name
    (a case-insensitive substring; ``%`` and ``_`` are taken literally).
    """
    if query.get("verdict"):
        verdict = func.coalesce(
            Job.summary["verdict"].as_string(), Job.summary["label"].as_string()
        )
        q = q.where(verdict == query["verdict"])
    if query.get("ood") is not None:
        flagged = func.coalesce(Job.summary["out_of_distribution"].as_boolean(), false())
        q = q.where(flagged == query["ood"])
    if query.get("q"):
        pattern = re.sub(r"([\\%_])", r"\\\1", query["q"])
        q = q.where(Job.input_name.ilike(f"%{pattern}%", escape="\\"))
    return q


@bp.get("/jobs/<job_id>")
@bp.auth_required(auth)
@bp.input(JobWaitQuery, location="query", arg_name="query")
@bp.output(JobOut)
@bp.doc(
    summary="Poll a job",
    description=(
        "With `wait=S` the answer is held until the job has ended (or S seconds, at most "
        "JOB_WAIT_MAX_S, have passed) and then gives the job as it is: one request instead "
        "of many polls, and the end is seen at once. When the server already holds "
        "JOB_WAITERS_PER_PROCESS waiting requests it answers at once."
    ),
    responses=[200, 400, 401, 404, 429],
)
def get_job(job_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """Status, progress, and the study summary once the job has succeeded."""
    who = caller()
    job = _job_now(job_id, who)
    if job["status"] in ACTIVE_STATUSES and query["wait"] > 0:
        wait_s = min(query["wait"], context.settings().job_wait_max_s)
        job = _wait_for_end(job_id, who, wait_s) or _job_now(job_id, who)
    return job


def _job_now(job_id: str, who: Caller) -> dict[str, Any]:
    with context.session() as s:
        return job_to_dict(_owned(s, job_id, who))


def _wait_for_end(job_id: str, who: Caller, timeout_s: float) -> dict[str, Any] | None:
    """The job once it has ended, if that happens within ``timeout_s``."""

    def ended() -> dict[str, Any] | None:
        job = _job_now(job_id, who)
        return None if job["status"] in ACTIVE_STATUSES else job

    return _held([job_id], ended, timeout_s)


def _held(job_ids: list[str], ready: Callable[[], T | None], timeout_s: float) -> T | None:
    """``ready()``'s answer once it has one, re-asked as these jobs end (config/notices.py).

    Holds no database connection while waiting. None after ``timeout_s``, and
    at once when this process already holds JOB_WAITERS_PER_PROCESS waits.
    """
    waiters: threading.BoundedSemaphore = current_app.extensions["lungct_waiters"]
    if timeout_s <= 0 or not waiters.acquire(blocking=False):
        return None
    try:
        return wait_until(context.settings(), job_ids, ready, timeout_s)
    finally:
        waiters.release()


@bp.get("/jobs/<job_id>/results")
@bp.auth_required(auth)
@bp.input(ResultsQuery, location="query", arg_name="query")
@bp.output(ResultsOut)
@bp.doc(summary="Per-slice predictions, paginated", responses=[200, 400, 401, 404, 429])
def get_results(job_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """Slices in order (series, then anatomical position); ``next`` links the next page."""
    with context.session() as s:
        _owned(s, job_id, caller())
        mine = SlicePrediction.job_id == job_id
        total = s.scalar(select(func.count()).select_from(SlicePrediction).where(mine))
        ordered = select(SlicePrediction).where(mine).order_by(SlicePrediction.slice_index)
        rows, nxt = pages.page(s, ordered, query, "jobs.get_results", job_id=job_id)
        items = [prediction_to_dict(r) for r in rows]
    return {"items": items, "total": total or 0, "next": nxt}


@bp.post("/jobs/<job_id>/cancel")
@bp.auth_required(auth)
@bp.output(CancelOut)
@bp.doc(
    summary="Cancel a job",
    description=(
        "A queued job is `cancelled` at once. A running job stops after its current batch, "
        "keeps the slices it stored, and ends `cancelled` (`cancel_requested` is true "
        "meanwhile). 409 if the job has already ended."
    ),
    responses=[200, 401, 404, 409, 429],
)
def cancel_job(job_id: str) -> dict[str, Any]:
    """Cancel the caller's job; its upload is freed once it has stopped."""
    who = caller()
    with context.session() as s:
        job = _owned(s, job_id, who)
        if job.status not in ACTIVE_STATUSES:
            abort(409, f"job has already ended ({job.status})")
    ended = ending.close(
        context.settings(), context.storage(), {job_id: ending.cancelled((JobStatus.QUEUED,))}
    )
    with context.session() as s:
        if not ended and not lifecycle.request_cancel(s, job_id):
            abort(409, f"job has already ended ({s.get_one(Job, job_id).status})")
        audit(s, who, "cancel", job_id)
        return job_to_dict(s.get_one(Job, job_id))


@bp.delete("/jobs/<job_id>")
@bp.auth_required(auth)
@bp.output({}, status_code=204)
@bp.doc(summary="Delete a job, its upload and its results", responses=[204, 401, 404, 409, 429])
def delete_job(job_id: str) -> tuple[str, int]:
    """Remove everything stored for an ended job (patient data hygiene)."""
    who = caller()
    with context.session() as s:
        job = _owned(s, job_id, who)
        if job.status in ACTIVE_STATUSES:
            abort(409, f"job is {job.status}; cancel it first, or delete it once it has ended")
        audit(s, who, "delete", job_id)
    ending.remove(context.settings(), context.storage(), [job_id])
    return "", 204


def _slice_pack(job_id: str, slice_index: int) -> str | None:
    """The caller's job's slice pack (owner-checked like every job route; db/slices.py)."""
    with context.session() as s:
        _owned(s, job_id, caller())
        return pack_names(s, job_id, [slice_index])[slice_index]


def _stored(data: bytes | None, job_id: str, slice_index: int, what: str) -> Response:
    """A stored slice file as a private, cacheable PNG response, or 404."""
    if data is None:
        abort(404, f"no {what} for slice {slice_index} of job {job_id!r}")
    response = Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def gray_png(pixels: np.ndarray) -> bytes:
    """A slice pack's 8-bit image (h, w) as a grayscale PNG (what the worker once stored)."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


@bp.get("/jobs/<job_id>/slices/<int:slice_index>/image")
@bp.auth_required(auth)
@bp.doc(
    summary="A slice as the model saw it (PNG)",
    description="After windowing, resizing and scaling: the model's input size, 8-bit gray.",
    responses=PNG_RESPONSES,
)
def slice_image(job_id: str, slice_index: int) -> Response:
    """PNG-encoded here from the pack's raw pixels: only the slices someone looks at pay for it."""
    pack = _slice_pack(job_id, slice_index)
    pixels = packs.read_pixels(context.storage(), job_id, pack, slice_index)
    return _stored(None if pixels is None else gray_png(pixels), job_id, slice_index, "image")


@bp.get("/jobs/<job_id>/slices/<int:slice_index>/heatmap")
@bp.auth_required(auth)
@bp.doc(
    summary="Grad-CAM heat map of a top slice (PNG)",
    description=(
        "Red with opacity where the model looked, the size of the slice image; only for the "
        "top slices of each series (HEATMAP_SLICES_PER_SERIES)."
    ),
    responses=PNG_RESPONSES,
)
def slice_heatmap(job_id: str, slice_index: int) -> Response:
    with context.session() as s:
        _owned(s, job_id, caller())
    data = context.storage().get(job_id, f"heatmaps/{slice_index}.png")
    return _stored(data, job_id, slice_index, "heat map")


VIEW_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg"}
HU_VIEW_TYPE = "application/vnd.lungct.hu16"
VIEW_RESPONSES: Any = {
    200: {"content": {"image/png": {}, "image/jpeg": {}, HU_VIEW_TYPE: {}}},
    401: {},
    404: {},
}


@bp.get("/jobs/<job_id>/slices/<int:slice_index>/view")
@bp.auth_required(auth)
@bp.doc(
    summary="A slice at full resolution, for the slice viewer",
    description=(
        "PNG/JPEG inputs: the uploaded image (text chunks and comments removed). DICOM: "
        f"`{HU_VIEW_TYPE}`, sent with `Content-Encoding: deflate` (the browser inflates it): "
        "a 24-byte little-endian header (`HU16`, rows, columns, flags (1: MONOCHROME1), the "
        "model's window center and width as float32), then rows x columns int16 modality "
        "values (HU for CT). 404 when no viewing copy was kept (STORE_SLICE_VIEWS=0)."
    ),
    responses=VIEW_RESPONSES,
)
def slice_view(job_id: str, slice_index: int) -> Response:
    pack = _slice_pack(job_id, slice_index)
    data = packs.read_view(context.storage(), job_id, pack, slice_index)
    response = _stored(data, job_id, slice_index, "viewing copy")
    data = response.get_data()
    mimetype = next((t for magic, t in VIEW_TYPES.items() if data.startswith(magic)), None)
    if mimetype is None:  # modality values: stored raw, compressed for the wire here
        response.set_data(deflated(data))
        response.mimetype = HU_VIEW_TYPE
        response.headers["Content-Encoding"] = "deflate"
    else:
        response.mimetype = mimetype
    return response
