"""Many jobs in one request: a multi-file submit, and the results of many jobs.

A folder of loose slices sent one request per file cost the API about 12 ms
of CPU a slice: a multipart parse, the upload check, three short
transactions, a Redis push and an HTTP round trip (docs/benchmarks.md).
``POST /api/v1/jobs/batch`` makes one job per file exactly as
``POST /api/v1/jobs`` would (the same upload check, storage, idempotency and
cap rules: the helpers of api/jobs.py), with one multipart parse, one
idempotency lookup, one transaction (one owner lock, one cap check, one audit
batch) and one Redis push per model. Each file gets its own answer, so one
bad file never loses the others. ``GET /api/v1/results`` pages through the
slices of many jobs, so a client collects a folder's results in one request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from apiflask import APIBlueprint, HTTPError, abort
from flask import request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.datastructures import FileStorage

from api import context, pages
from api.auth import Caller, auth, caller
from api.jobs import (
    active_counts,
    admissible,
    audit,
    cap_refusal,
    choose_model,
    fail_unqueued,
    hashed_key,
    jobs_by_keys,
    owner_lock,
    queue_unavailable,
    same_upload,
    stored_job,
    upload_sha256,
)
from api.queue import queue_jobs
from api.schemas import BatchIn, BatchOut, ManyResultsOut, ManyResultsQuery
from api.serializers import job_to_dict, prediction_to_dict
from config import Settings
from db.models import Job, SlicePrediction
from db.session import insert_new, transaction_lock
from models.registry import ModelCard

bp = APIBlueprint("batch", __name__, url_prefix="/api/v1", tag="Jobs")
SUBMIT_ENDPOINT = "batch.submit_batch"
KEY_FIELD = "idempotency_key"
OTHER_PARTS = 2
"""Form parts a batch may have besides its files and their keys (``model``, and one spare)."""


def batch_form_parts(settings: Settings) -> int:
    """The form parts a batch may have: every file with its key, and ``model``."""
    return 2 * settings.batch_max_files + OTHER_PARTS


@bp.before_request
def _room_for_every_file() -> None:
    """MAX_FORM_PARTS is sized for one upload; a batch's parse may read a key and a file
    for each of BATCH_MAX_FILES (werkzeug enforces the limit while it parses)."""
    if request.endpoint == SUBMIT_ENDPOINT:
        request.max_form_parts = batch_form_parts(context.settings())


@dataclass
class Item:
    """One file of a batch and what became of it."""

    index: int
    upload: FileStorage | None
    key: str | None = None
    digest: str | None = None
    job: Job | None = None
    new: bool = False  # ``job`` was made by this request (not a replay)
    committed: bool = False  # ... and committed
    status: int = 202
    error: str | None = None
    same_as: Item | None = None  # an earlier file of this batch with the same key and bytes

    def refuse(self, status: int, message: str) -> None:
        self.status, self.error, self.job, self.new = status, message, None, False

    @property
    def pending(self) -> bool:
        """Still to be checked and stored: no answer yet, and no earlier file answers for it."""
        return self.error is None and self.job is None and self.same_as is None


@bp.post("/jobs/batch")
@bp.auth_required(auth)
@bp.input(BatchIn, location="form_and_files", arg_name="form")
@bp.output(BatchOut)
@bp.doc(
    summary="Submit many slices or studies at once",
    description=(
        "Each `file` part becomes its own job, exactly as `POST /api/v1/jobs` would make it. "
        "Answers 200 with one item per file, in order: `status` 202 and the `job` when it "
        "was created, 200 and the earlier job when its `idempotency_key` (one per file, in "
        "the files' order) was used within IDEMPOTENCY_HOURS for the same bytes, or the "
        "refusal and an `error`: 400 unreadable, 422 key used for other bytes, 429 over "
        "MAX_ACTIVE_JOBS_PER_OWNER (the files that fit, in order, are admitted; the answer "
        "then carries `Retry-After`), 503 queue unavailable. At most BATCH_MAX_FILES files "
        "(more: 400 for the whole request); the body's limit is MAX_UPLOAD_MB."
    ),
    responses=[200, 400, 401, 408, 413, 429],
)
def submit_batch(form: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Check, store, record and queue every file of the request; answer per file."""
    who = caller()
    uploads: list[FileStorage | None] = form.get("file") or []
    raw_keys: list[str] = form.get(KEY_FIELD) or [""] * len(uploads)
    _check_counts(len(uploads), len(raw_keys), context.settings())
    card = choose_model(form.get("model"))
    pairs = enumerate(zip(uploads, raw_keys, strict=True))
    items = [_item(i, upload, raw) for i, (upload, raw) in pairs]
    _same_keys(items)
    with context.session() as s:
        _replays(items, jobs_by_keys(s, who.owner, {i.key for i in items if i.pending and i.key}))
    retry_after = _store_and_record(items, card, who)
    _queue([i for i in items if i.committed], context.settings())
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return {"items": [_answer(i) for i in items]}, 200, headers


def _check_counts(files: int, keys: int, settings: Settings) -> None:
    """400 for the whole request: too many files, or keys that do not pair with them."""
    if files > settings.batch_max_files:
        abort(
            400,
            f"too many files: a batch takes at most {settings.batch_max_files} "
            f"(BATCH_MAX_FILES), this one has {files}; send the rest in another batch",
            detail={"batch": {"max_files": settings.batch_max_files}},
        )
    if keys != files:
        abort(
            400,
            f"{keys} {KEY_FIELD} fields for {files} files: send one per file, in the files' "
            "order (an empty one for a file without a key), or none",
        )


def _item(index: int, upload: FileStorage | None, raw_key: str) -> Item:
    """A file of the batch with its hashed key and, when it has a key, its SHA-256."""
    item = Item(index, upload)
    if upload is None or not upload.filename:
        item.refuse(400, f"file {index} has no file name: send each file with one")
        return item
    try:
        item.key = hashed_key(raw_key, KEY_FIELD)
    except HTTPError as exc:
        item.refuse(exc.status_code, exc.message or "refused")
        return item
    item.digest = upload_sha256(upload) if item.key else None
    return item


def _same_keys(items: list[Item]) -> None:
    """A key used twice in one batch: the later file answers as the earlier one if the
    bytes are the same (a folder holding two copies of a slice), else 422."""
    first: dict[str, Item] = {}
    for item in items:
        if not item.pending or item.key is None:
            continue
        earlier = first.setdefault(item.key, item)
        if earlier is item:
            continue
        if earlier.digest == item.digest:
            item.same_as = earlier
        else:
            item.refuse(
                422,
                f"this {KEY_FIELD} was already used for a different upload (file "
                f"{earlier.index} of this batch); send a new key for new content",
            )


def _replays(items: list[Item], earlier: dict[str, Job]) -> None:
    """Files whose key this owner used recently answer with that job (200), or 422."""
    for item in items:
        job = earlier.get(item.key or "")
        if job is None or not item.pending:
            continue
        try:
            item.job, item.status = same_upload(job, item.digest, KEY_FIELD), 200
        except HTTPError as exc:
            item.refuse(exc.status_code, exc.message or "refused")


def _store_and_record(items: list[Item], card: ModelCard, who: Caller) -> int | None:
    """Check and save every pending file, then commit their jobs; the Retry-After of a
    cap refusal, if any. Nothing stored is left behind when this fails."""
    try:
        for item in items:
            if item.pending:
                _store(item, card, who)
        try:
            return _record(items, who)
        except IntegrityError:  # a key committed a moment ago by another request
            with context.session() as s:
                keys = {i.key for i in items if i.new and i.key}
                taken = jobs_by_keys(s, who.owner, keys)
            for item in items:
                if item.new and item.key in taken:
                    _discard(item)
            _replays(items, taken)
            return _record(items, who)
    except BaseException:
        for item in items:
            if item.new and not item.committed:
                _discard(item)
        raise


def _store(item: Item, card: ModelCard, who: Caller) -> None:
    """The upload check and storage of one file, as a single submit does them."""
    assert item.upload is not None
    job_id = str(uuid.uuid4())
    try:
        item.job = stored_job(job_id, item.upload, card, who, item.key, item.digest)
        item.new = True
    except HTTPError as exc:
        context.storage().discard(job_id)
        item.refuse(exc.status_code, exc.message or "refused")


def _discard(item: Item) -> None:
    """Forget a job this request made and did not commit, and its stored upload."""
    assert item.job is not None
    context.storage().discard(item.job.id)
    item.job, item.new = None, False


def _record(items: list[Item], who: Caller) -> int | None:
    """Commit the new jobs that fit under the owner's cap (a prefix, in order), in one
    transaction; refuse the rest with 429 and return their Retry-After."""
    new = [i for i in items if i.new]
    if not new:
        return None
    with context.session() as s:
        transaction_lock(s, owner_lock(who.owner))
        active = active_counts(s, who.owner)
        fits = admissible(active, [_job(i).kind for i in new])
        admitted = [_job(item) for item in new[:fits]]
        insert_new(s, admitted)
        audit(s, who, "submit", *(job.id for job in admitted))
        for job in admitted:
            active[job.kind] = active.get(job.kind, 0) + 1
        message, retry_after = cap_refusal(s, who.owner, active) if fits < len(new) else ("", 0)
    for item in new[:fits]:
        item.committed = True
    if fits == len(new):
        return None
    for item in new[fits:]:
        _discard(item)
        item.refuse(429, message)
    return retry_after


def _job(item: Item) -> Job:
    assert item.job is not None
    return item.job


def _queue(committed: list[Item], settings: Settings) -> None:
    """Queue the committed jobs; those the queue did not take fail (if still queued), 503."""
    jobs = [_job(i) for i in committed]
    unqueued, reason = queue_jobs(settings, [(j.id, j.kind, j.model_name) for j in jobs])
    if not unqueued:
        return
    fail_unqueued(unqueued, reason)
    for item in committed:
        if _job(item).id in unqueued:
            item.refuse(503, queue_unavailable(reason))


def _answer(item: Item) -> dict[str, Any]:
    """One file's item of the answer; a file that shares an earlier one's key answers as it."""
    if item.same_as is not None:
        target = item.same_as
        status = 200 if target.error is None else target.status
        item = Item(item.index, item.upload, job=target.job, status=status, error=target.error)
    if item.error is not None:
        return {"index": item.index, "status": item.status, "error": {"message": item.error}}
    return {"index": item.index, "status": item.status, "job": job_to_dict(_job(item))}


@bp.get("/results")
@bp.auth_required(auth)
@bp.input(ManyResultsQuery, location="query", arg_name="query")
@bp.output(ManyResultsOut)
@bp.doc(
    summary="Per-slice predictions of many jobs, paginated",
    description=(
        "The slices of the jobs named by `job` (repeated, at most 100), by job ID and then "
        "in each job's slice order, each with its `job_id`: a client collects a folder's "
        "results in one request instead of one per job. Jobs that do not exist or belong "
        "to another owner are simply absent. `next` links the next page."
    ),
    responses=[200, 400, 401, 429],
)
def many_results(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's slices of the named jobs (every owner's for an admin key)."""
    who = caller()
    q = select(SlicePrediction).join(Job, Job.id == SlicePrediction.job_id)
    q = q.where(Job.id.in_(query["job"]))
    if not who.admin:
        q = q.where(Job.owner == who.owner)
    ordered = q.order_by(SlicePrediction.job_id, SlicePrediction.slice_index)
    with context.session() as s:
        rows, nxt = pages.page(s, ordered, query, "batch.many_results", ("job",))
        items = [{"job_id": r.job_id, **prediction_to_dict(r)} for r in rows]
    return {"items": items, "next": nxt}
