"""A job from stored upload to stored results: plan -> decode -> predict -> write.

Decoding runs in a thread pool a window ahead of the model, so reading the
next slices overlaps the forward pass of the current batch. Each batch's
results are written in one transaction with the progress and a heartbeat.
Writes are idempotent (unique job/slice index, insert-or-ignore), so a job
continued by another worker only fills in what is missing.

Status changes go through :mod:`db.lifecycle`. Between batches the job stops
early when it was cancelled (it ends ``cancelled``, keeping what it stored),
when this worker is shutting down (it is handed back to the queue), or when
another worker took it over (this one just stops).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import PurePath
from typing import NoReturn

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from config import Settings, get_settings
from config.doorbell import batching
from config.notices import announce_ended
from db import lifecycle
from db.models import Job, JobKind, JobStatus, SlicePrediction
from db.session import session_scope
from ingest import InvalidUpload, SliceError, SliceSource, UploadPlan, plan_upload
from models.preprocessing import preprocess
from storage import Storage, open_storage
from worker import metrics
from worker.images import store_heatmaps, store_images, store_views  # VIEWER HOOK
from worker.inference import Predictor, get_predictor
from worker.summary import SeriesName, series_names, summarize

log = logging.getLogger(__name__)

SHUTDOWN = threading.Event()
"""Set (by worker/signals.py) when this worker process is asked to stop: jobs hand back."""


class JobFailed(Exception):
    """The job ended ``failed``; raised so Celery (and Flower) record the task as FAILURE."""


class Stop(enum.Enum):
    """Why a job stopped before its last batch."""

    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    LOST = "lost"


@dataclass
class Decoded:
    """One slice after decoding: a model-ready tensor, or the reason it failed."""

    source: SliceSource
    tensor: np.ndarray | None
    error: str | None
    view: bytes | None = None  # VIEWER HOOK: full-resolution viewing copy (ingest/views.py)


class Heartbeat:
    """Beats for a running job from a thread, and says whether the job should stop.

    The pipeline also beats with every stored batch; the thread covers long
    phases without batches (planning a large archive, loading a model), so the
    sweeper only ever takes over jobs whose process is really gone.
    """

    def __init__(self, job_id: str, interval_s: float) -> None:
        self.job_id = job_id
        self.interval_s = interval_s
        self._ours = True
        self._cancel = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                with session_scope() as s:
                    self.record(lifecycle.heartbeat(s, self.job_id), s)
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("job %s: heartbeat failed: %s", self.job_id, type(exc).__name__)

    def record(self, alive: bool, s: Session) -> None:
        """Remember a heartbeat's answer (False: cancel requested, or no longer ours)."""
        if alive:
            return
        row = s.execute(
            select(Job.status, Job.cancel_requested).where(Job.id == self.job_id)
        ).one_or_none()
        if row is not None and row.status == JobStatus.RUNNING and row.cancel_requested:
            self._cancel = True
        else:
            self._ours = False

    def stop_reason(self) -> Stop | None:
        """Why the job should stop now, if it should (checked between batches)."""
        if self._cancel:
            return Stop.CANCELLED
        if SHUTDOWN.is_set():
            return Stop.SHUTDOWN
        if not self._ours:
            return Stop.LOST
        return None


def run_job(job_id: str, publish: Callable[[str], None]) -> None:
    """Run job ``job_id`` until it ends or stops; raise :class:`JobFailed` if it failed.

    ``publish`` sends a job's message: this job's again after it was handed
    back because this worker is shutting down, or another job's when a
    micro-batch rings the doorbell for the rest of a burst (config/doorbell.py).
    """
    settings = get_settings()
    storage = open_storage(settings)
    with session_scope() as s:
        started = lifecycle.start(s, job_id, settings.stale_after_s)
    if started is None:
        _nothing_to_do(job_id, settings, publish)
        return
    image_batch = started.kind == JobKind.IMAGE and batching(settings)
    if started.attempts > settings.max_attempts:  # started again and again without finishing
        try:
            end_failed(
                job_id,
                f"started {settings.max_attempts} times without finishing "
                "(worker crashes or database outages)",
            )
        finally:
            if image_batch:  # its message may have rung the doorbell for others
                from worker.microbatch import pass_on

                pass_on(settings, started.model_name, publish)
    if image_batch:
        from worker.microbatch import run_group

        run_group(started, settings, storage, publish)
        return
    with Heartbeat(job_id, settings.heartbeat_interval_s) as beat:
        stop = _run_started(started, beat, storage, settings)
    _after_stop(job_id, stop, lambda: publish(job_id), storage)


def _nothing_to_do(job_id: str, settings: Settings, publish: Callable[[str], None]) -> None:
    """A delivery of a job that is unknown, running elsewhere or ended.

    With micro-batching its message may have rung the doorbell for single
    images queued after it without a message of their own: it passes the
    doorbell on (worker.microbatch.pass_on). A job another worker already
    ended as failed (for instance one that ran in its micro-batch) fails this
    task too, so Flower shows every task truthfully.
    """
    with session_scope() as s:
        row = s.execute(
            select(Job.status, Job.error, Job.kind, Job.model_name).where(Job.id == job_id)
        ).one_or_none()
    log.info("job %s: nothing to do (%s)", job_id, row.status if row else "unknown")
    if row is None or row.kind == JobKind.IMAGE:
        from worker.microbatch import pass_on

        pass_on(settings, None if row is None else row.model_name, publish)
    if row is not None and row.status == JobStatus.FAILED:
        raise JobFailed(row.error or "failed")


def _run_started(
    started: lifecycle.Started, beat: Heartbeat, storage: Storage, settings: Settings
) -> Stop | None:
    """Plan, predict and store; then summarise, unless the job had to stop early.

    The upload is read from a local file (S3: a temporary download, deleted
    when the ``with`` ends, before the job is closed).
    """
    job_id = started.job_id
    key = started.upload_key
    with storage.local_file(key) as path:
        try:
            plan = plan_upload(path, settings, filename=PurePath(key).name)
        except InvalidUpload as exc:
            end_failed(job_id, str(exc))
        predictor = get_predictor(started.model_name)
        with plan:  # releases the per-thread archive handles before the upload is deleted
            _record_plan(job_id, plan)
            done = _done_indexes(job_id)
            todo = [s for s in plan.slices if s.index not in done]
            stop = _predict_and_store(job_id, todo, predictor, settings, beat, storage)
            names = series_names(plan.series)
    if stop is None:
        heatmaps = bool(settings.heatmap_slices_per_series) and (
            started.kind == JobKind.STUDY or settings.heatmaps_for_images
        )
        _finish(job_id, predictor, settings, storage, names, heatmaps)
    return stop


def _after_stop(
    job_id: str, stop: Stop | None, republish: Callable[[], None], storage: Storage
) -> None:
    """Close a job that stopped early: cancelled, handed back, or taken over."""
    if stop is Stop.CANCELLED:
        with session_scope() as s:
            ended = lifecycle.cancelled(s, job_id)
        if ended:
            closed({job_id: "cancelled"}, storage, get_settings())
        log.info("job %s cancelled after its current batch", job_id)
    elif stop is Stop.SHUTDOWN:
        with session_scope() as s:
            handed_back = lifecycle.hand_back(s, job_id)
        if handed_back:
            metrics.JOBS.labels("handed_back").inc()
            try:
                republish()
            except Exception as exc:  # broker away: the job is queued, the sweeper publishes it
                log.warning("job %s: republish failed (%s); left to the sweeper", job_id, exc)
        log.info("job %s handed back to the queue: this worker is stopping", job_id)
    elif stop is Stop.LOST:
        log.info("job %s is no longer this worker's (taken over or ended elsewhere)", job_id)


def _predict_and_store(
    job_id: str,
    todo: list[SliceSource],
    predictor: Predictor,
    settings: Settings,
    beat: Heartbeat,
    storage: Storage,
) -> Stop | None:
    """Predict batch after batch while a writer thread stores the previous batch.

    At most one write is in flight, so batches land in order and a slow
    database applies back-pressure instead of piling results up in memory.
    Returns why the job stopped early, or None once every slice is stored.
    """
    stop: Stop | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer") as writer:
        pending: Future[None] | None = None
        batches = _batches(_decode_ahead(todo, predictor, settings), settings.inference_batch_size)
        for batch in batches:
            started = time.perf_counter()
            rows = _predict(batch, predictor)
            failed = sum(1 for d in batch if d.tensor is None)
            metrics.observe_batch(len(batch), failed, time.perf_counter() - started)
            if pending is not None:
                pending.result()
            images = batch if settings.store_slice_images else []
            pending = writer.submit(_store_batch, job_id, rows, beat, storage, images)
            if (stop := beat.stop_reason()) is not None:
                break
        if pending is not None:
            pending.result()
    return stop or beat.stop_reason()


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
        views = get_settings().store_slice_views  # VIEWER HOOK
        image, view = source.load_with_view() if views else (source.load(), None)  # VIEWER HOOK
        return Decoded(source, preprocess(image, predictor.card.input), None, view)  # VIEWER HOOK
    except SliceError as exc:
        return Decoded(source, None, str(exc))
    except Exception as exc:  # an unexpected decoder failure must not sink the study
        log.warning("slice %s: %s", source.source, exc)
        return Decoded(source, None, source.scrub(f"could not decode: {type(exc).__name__}: {exc}"))


def _decode_ahead(
    todo: list[SliceSource], predictor: Predictor, settings: Settings
) -> Iterator[Decoded]:
    """Decode in a thread pool, at most two batches ahead of the consumer."""
    window = 2 * settings.inference_batch_size
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
    classes = predictor.card.classes
    rows = []
    i = 0
    for d in batch:  # slices of several jobs may share an index: match by position
        if out is None or d.tensor is None:
            rows.append(_row(d, None, None))
            continue
        p = out.probabilities[i]
        probabilities = {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)}
        ood = None
        if out.ood_score is not None and out.out_of_distribution is not None:
            ood = (round(float(out.ood_score[i]), 4), bool(out.out_of_distribution[i]))
        rows.append(_row(d, probabilities, classes[int(np.argmax(p))], ood))
        i += 1
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


INSERT_ROWS = 2000
"""Rows per INSERT: 12 values each stays far below PostgreSQL's 65,535 parameters."""


def _insert_ignore(session: Session, rows: list[dict], chunk: int = INSERT_ROWS) -> None:
    """Insert rows (each with its ``job_id``), skipping slices a previous delivery stored."""
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    for start in range(0, len(rows), chunk):
        stmt = insert(SlicePrediction).values(rows[start : start + chunk])
        session.execute(stmt.on_conflict_do_nothing(index_elements=["job_id", "slice_index"]))


def _store_batch(
    job_id: str, rows: list[dict], beat: Heartbeat, storage: Storage, images: list[Decoded]
) -> None:
    """Store one batch's slice images, then its rows, progress and a heartbeat in one transaction.

    Images first: a slice counted as done has its image.
    """
    store_images(storage, job_id, images)
    store_views(storage, job_id, images)  # VIEWER HOOK
    with session_scope() as s:
        _insert_ignore(s, [{"job_id": job_id, **r} for r in rows])
        done, failed = _counts(s, job_id)
        beat.record(lifecycle.heartbeat(s, job_id, done=done, failed_slices=failed), s)


def _counts(s: Session, job_id: str) -> tuple[int, int]:
    """(stored slices, stored slices with an error) for a job."""
    q = select(func.count(), func.count(SlicePrediction.error)).where(
        SlicePrediction.job_id == job_id
    )
    done, failed = s.execute(q).one()
    return int(done), int(failed)


def _finish(
    job_id: str,
    predictor: Predictor,
    settings: Settings,
    storage: Storage,
    names: dict[str, SeriesName],
    heatmaps: bool,
) -> None:
    """Summarise the stored rows, store the top slices' heat maps, then close the job.

    Heat maps come before the job reads ``succeeded``, so a client that sees the
    verdict finds them too.
    """
    with session_scope() as s:
        skipped = len(s.get_one(Job, job_id).warnings)
        rows = s.scalars(
            select(SlicePrediction)
            .where(SlicePrediction.job_id == job_id)
            .order_by(SlicePrediction.slice_index)
        ).all()
    if rows and all(r.error for r in rows):
        error = f"no slice could be decoded: {rows[0].error}"
        with session_scope() as s:
            ended = lifecycle.fail(s, job_id, error, running_only=True)
    else:
        error = None
        summary = summarize(rows, predictor.card, settings, skipped, names)
        if heatmaps:
            store_heatmaps({job_id: summary}, predictor, storage, settings)
        with session_scope() as s:
            ended = lifecycle.succeed(s, job_id, summary)
    if ended:
        closed({job_id: "failed" if error else "succeeded"}, storage, settings)
    if error is not None:
        raise JobFailed(error) from None


def fail_job(job_id: str, message: str, settings: Settings) -> bool:
    """Close this worker's running job as failed and release its upload; True if it moved.

    Only a running job: one this worker handed back (queued) or that another
    worker took over is not this worker's to fail.
    """
    with session_scope() as s:
        ended = lifecycle.fail(s, job_id, message, running_only=True)
    if ended:
        closed({job_id: "failed"}, open_storage(settings), settings)
    return ended


def closed(outcomes: dict[str, str], storage: Storage, settings: Settings) -> None:
    """After jobs' terminal moves were committed (job ID -> outcome): free their uploads,
    count them, and tell waiting polls in one Redis round trip."""
    for job_id, outcome in outcomes.items():
        storage.release(job_id)
        metrics.JOBS.labels(outcome).inc()
    announce_ended(settings, outcomes)


def end_failed(job_id: str, message: str) -> NoReturn:
    """:func:`fail_job`, then raise JobFailed so Celery records the task as FAILURE."""
    fail_job(job_id, message, get_settings())
    raise JobFailed(message) from None
