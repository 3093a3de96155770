"""A job from stored upload to stored results: plan -> decode -> predict -> write.

Decoding runs in a thread pool a window ahead of the model, so reading the
next slices overlaps the forward pass of the current batch. Each batch's
results are written in one transaction and advance the progress. Writes are
idempotent (unique job/slice index, insert-or-ignore), so a redelivered job
only fills in what is missing.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from config import Settings, get_settings
from db.models import Job, JobStatus, SlicePrediction, utcnow
from db.session import session_scope
from ingest import InvalidUpload, SliceError, SliceSource, UploadPlan, plan_upload
from models.preprocessing import preprocess
from worker.inference import Predictor, get_predictor
from worker.summary import summarize

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """One slice after decoding: a model-ready tensor, or the reason it failed."""

    source: SliceSource
    tensor: np.ndarray | None
    error: str | None


MAX_ATTEMPTS = 3


def run_job(job_id: str) -> None:
    """Run job ``job_id`` to a terminal state (unless it already reached one)."""
    settings = get_settings()
    start = _start(job_id)
    if start is None:
        return
    model_name, upload = start
    try:
        plan = plan_upload(settings.storage_dir / upload, settings)
    except InvalidUpload as exc:
        mark_failed(job_id, str(exc))
        return
    predictor = get_predictor(model_name)
    with plan:  # releases the per-thread archive handles before the upload is deleted
        _record_plan(job_id, plan)
        done = _done_indexes(job_id)
        todo = [s for s in plan.slices if s.index not in done]
        _predict_and_store(job_id, todo, predictor, settings)
    _finish(job_id, predictor, settings)


def _predict_and_store(
    job_id: str, todo: list[SliceSource], predictor: Predictor, settings: Settings
) -> None:
    """Predict batch after batch while a writer thread stores the previous batch.

    At most one write is in flight, so batches land in order and a slow
    database applies back-pressure instead of piling results up in memory.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer") as writer:
        pending: Future[None] | None = None
        for batch in _batches(_decode_ahead(todo, predictor, settings), settings.batch_size):
            rows = _predict(batch, predictor)
            if pending is not None:
                pending.result()
            pending = writer.submit(_store_batch, job_id, rows)
        if pending is not None:
            pending.result()


def _transition(s: Session, job_id: str, allowed: tuple[JobStatus, ...], **values: object) -> bool:
    """Set ``values`` only if the job is still in one of ``allowed`` states.

    A conditional UPDATE is atomic on every backend (SQLite ignores row locks),
    so two deliveries of one job cannot both move it, or undo a terminal state.
    """
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([str(a) for a in allowed]))
        .values(updated_at=utcnow(), **values)
    )
    return s.execute(stmt).rowcount == 1


def _start(job_id: str) -> tuple[str, str] | None:
    """Mark the job running; None when it is unknown, finished, or retried too often."""
    with session_scope() as s:
        moved = _transition(
            s,
            job_id,
            (JobStatus.QUEUED, JobStatus.RUNNING),
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, utcnow()),
        )
        job = s.get(Job, job_id)
        if job is None or not moved:
            log.info("job %s is %s; nothing to do", job_id, job.status if job else "unknown")
            return None
        attempts, model_name, upload = job.attempts, job.model_name, job.upload_key
    if attempts > MAX_ATTEMPTS:  # started again and again without finishing
        mark_failed(
            job_id,
            f"started {MAX_ATTEMPTS} times without finishing (worker crashes or database outages)",
        )
        return None
    return model_name, upload


def _record_plan(job_id: str, plan: UploadPlan) -> None:
    """Store the slice count and the skipped members before inference starts."""
    with session_scope() as s:
        job = s.get_one(Job, job_id)
        job.total = len(plan.slices)
        job.warnings = [{"source": k.source, "reason": k.reason} for k in plan.skipped]


def _done_indexes(job_id: str) -> set[int]:
    """Slice indexes already stored (non-empty only for a redelivered job)."""
    with session_scope() as s:
        q = select(SlicePrediction.slice_index).where(SlicePrediction.job_id == job_id)
        return set(s.scalars(q))


def _load(source: SliceSource, predictor: Predictor) -> Decoded:
    """Decode and preprocess one slice; a bad slice becomes a recorded error."""
    try:
        return Decoded(source, preprocess(source.load(), predictor.card.input), None)
    except SliceError as exc:
        return Decoded(source, None, str(exc))
    except Exception as exc:  # an unexpected decoder failure must not sink the study
        log.warning("slice %s: %s", source.source, exc)
        return Decoded(source, None, f"could not decode: {type(exc).__name__}: {exc}")


def _decode_ahead(
    todo: list[SliceSource], predictor: Predictor, settings: Settings
) -> Iterator[Decoded]:
    """Decode in a thread pool, at most two batches ahead of the consumer."""
    window = 2 * settings.batch_size
    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        pending: list[Future[Decoded]] = []
        sources = iter(todo)
        for source in islice(sources, window):
            pending.append(pool.submit(_load, source, predictor))
        while pending:
            decoded = pending.pop(0).result()
            nxt = next(sources, None)
            if nxt is not None:
                pending.append(pool.submit(_load, nxt, predictor))
            yield decoded


def _batches(items: Iterable[Decoded], size: int) -> Iterator[list[Decoded]]:
    """Group an iterator into lists of ``size`` (the last may be shorter)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _predict(batch: list[Decoded], predictor: Predictor) -> list[dict]:
    """Row values for one batch: one forward pass over the decodable slices."""
    good = [d for d in batch if d.tensor is not None]
    out = predictor.predict(np.stack([d.tensor for d in good])) if good else None
    position = {d.source.index: i for i, d in enumerate(good)}
    classes = predictor.card.classes
    rows = []
    for d in batch:
        i = position.get(d.source.index)
        if out is None or i is None:
            rows.append(_row(d, None, None))
            continue
        p = out.probabilities[i]
        probabilities = {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)}
        ood = None
        if out.ood_score is not None and out.out_of_distribution is not None:
            ood = (round(float(out.ood_score[i]), 4), bool(out.out_of_distribution[i]))
        rows.append(_row(d, probabilities, classes[int(np.argmax(p))], ood))
    return rows


def _row(
    d: Decoded,
    probabilities: dict[str, float] | None,
    label: str | None,
    ood: tuple[float, bool] | None = None,
) -> dict:
    s = d.source
    return {
        "slice_index": s.index,
        "source": s.source,
        "series_uid": s.series_uid,
        "instance_number": s.instance_number,
        "slice_position": s.slice_position,
        "frame": s.frame,
        "label": label,
        "probabilities": probabilities,
        "ood_score": None if ood is None else ood[0],
        "out_of_distribution": None if ood is None else ood[1],
        "error": d.error,
    }


def _insert_ignore(session: Session, job_id: str, rows: list[dict]) -> None:
    """Insert rows, skipping slice indexes that a previous delivery stored."""
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    stmt = insert(SlicePrediction).values([{"job_id": job_id, **r} for r in rows])
    session.execute(stmt.on_conflict_do_nothing(index_elements=["job_id", "slice_index"]))


def _store_batch(job_id: str, rows: list[dict]) -> None:
    """Store one batch's rows and the new progress in one transaction."""
    with session_scope() as s:
        _insert_ignore(s, job_id, rows)
        done, failed = _counts(s, job_id)
        job = s.get_one(Job, job_id)
        job.done, job.failed_slices = done, failed


def _counts(s: Session, job_id: str) -> tuple[int, int]:
    """(stored slices, stored slices with an error) for a job."""
    q = select(func.count(), func.count(SlicePrediction.error)).where(
        SlicePrediction.job_id == job_id
    )
    done, failed = s.execute(q).one()
    return int(done), int(failed)


def _finish(job_id: str, predictor: Predictor, settings: Settings) -> None:
    """Compute the study summary from the stored rows and close the job."""
    with session_scope() as s:
        job = s.get_one(Job, job_id)
        rows = s.scalars(
            select(SlicePrediction)
            .where(SlicePrediction.job_id == job_id)
            .order_by(SlicePrediction.slice_index)
        ).all()
        if rows and all(r.error for r in rows):
            outcome = {
                "status": JobStatus.FAILED,
                "error": f"no slice could be decoded: {rows[0].error}",
            }
        else:
            summary = summarize(rows, predictor.card, settings, skipped=len(job.warnings))
            outcome = {"status": JobStatus.SUCCEEDED, "summary": summary, "error": None}
        upload = job.upload_key
        finished = _transition(s, job_id, (JobStatus.RUNNING,), finished_at=utcnow(), **outcome)
    if finished:
        _drop_upload(upload, settings)


def mark_failed(job_id: str, message: str) -> None:
    """Close a job as failed with a message the client can read (if it is not finished)."""
    with session_scope() as s:
        upload = s.scalar(select(Job.upload_key).where(Job.id == job_id))
        failed = _transition(
            s,
            job_id,
            (JobStatus.QUEUED, JobStatus.RUNNING),
            status=JobStatus.FAILED,
            error=message,
            finished_at=utcnow(),
        )
    if failed and upload:
        _drop_upload(upload, get_settings())


def _drop_upload(upload_key: str, settings: Settings) -> None:
    """Delete the stored upload once the job is finished, unless KEEP_UPLOADS is set.

    Uploads can hold patient data; results do not need them after the job.
    """
    if settings.keep_uploads:
        return
    folder = (settings.storage_dir / Path(upload_key)).parent
    if folder.resolve() != settings.storage_dir.resolve():
        shutil.rmtree(folder, ignore_errors=True)
