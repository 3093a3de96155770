"""The one batch runner: from claimed jobs to stored results, in plain stages.

A study is one job with many slices; a burst of single images is many jobs
with one slice each. Both go through the same stages:

    plan -> decode (+ viewing copy) -> predict (calibrated, OOD) -> store packs and rows
         -> summarise -> heat maps -> close (db/ending.py)

Decoding runs in a thread pool at most one batch per forward lane (plus one) ahead
of the model, so reading the next slices (and making their viewing copies) overlaps
the forward passes of the current ones; on ONNX Runtime ``FORWARD_LANES`` passes run
at once (worker/inference.py), taken in order. Slices of several jobs share forward
passes. A writer thread stores the predicted batches (one slice pack per job with
the slices' images and viewing copies, storage/packs.py; then rows naming their
packs, progress and a heartbeat in one transaction) while the next ones are
predicted; batches predicted during a store are stored together by the next one, and
at most one write is in flight, so a slow database applies back-pressure.

Writes are idempotent (unique job/slice index, insert-or-ignore), so a job
continued by another worker only fills in what is missing. Heat maps are
stored before a job reads ``succeeded``, so a client that sees the verdict
finds them too. Between batches a run stops early when its job was cancelled
(it ends ``cancelled``, keeping what it stored), when this worker is shutting
down (unfinished jobs are handed back to the queue) or when another worker
took the job over (this one just stops). Every status change goes through
db/lifecycle.py, every end through :func:`db.ending.close`.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import PurePath
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from config import Settings
from db import ending, lifecycle
from db.models import Job, JobKind, JobStatus, SlicePrediction
from db.records import SliceResult
from db.session import session_scope
from ingest import InvalidUpload, SliceError, SliceSource, plan_upload
from ingest.series_rules import SeriesRules, rules_for_model
from models.preprocessing import preprocess
from storage import Storage, packs
from worker import metrics
from worker.images import gray8, store_heatmaps
from worker.inference import Predictor, batch_size
from worker.summary import SeriesName, series_names, summarize

log = logging.getLogger(__name__)

SHUTDOWN = threading.Event()
"""Set (by worker/signals.py) when this worker process is asked to stop: jobs hand back."""

STORE_BACKLOG = 4
"""Batches predicted while a store is in flight are stored together, up to this many:
small (fast) batches then need fewer commits, and a slow database still holds the
model back (at most one write in flight)."""


class Stop(enum.Enum):
    """Why a run stopped before its last batch."""

    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    LOST = "lost"


class Stages:
    """Seconds spent per stage in one run, logged at its end (what the profile in
    docs/benchmarks.md reads). Decoding runs in threads, so its sum can exceed the
    run's wall time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._start = time.perf_counter()

    def add(self, stage: str, since: float) -> float:
        """Count the time from ``since`` to now for ``stage``; returns now."""
        now = time.perf_counter()
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now

    def log(self, jobs: int, slices: int) -> None:
        parts = " ".join(f"{k}={v:.3f}" for k, v in self.seconds.items())
        wall = time.perf_counter() - self._start
        log.info("run stages: jobs=%d slices=%d wall=%.3f %s", jobs, slices, wall, parts)


@dataclass(frozen=True)
class Context:
    """What a run needs, passed in by the worker's entry points (no global settings)."""

    settings: Settings
    storage: Storage
    predictor: Callable[[str], Predictor]
    republish: Callable[[str, str, str], None]  # (job ID, kind, model): queue it again
    stages: Stages = field(default_factory=Stages, compare=False)


@dataclass
class Decoded:
    """One slice after decoding: a model-ready tensor (and what a pack keeps), or why it failed."""

    job_id: str
    source: SliceSource
    tensor: np.ndarray | None
    error: str | None
    pixels: np.ndarray | None = None  # the slice as the model saw it, 8-bit (STORE_SLICE_IMAGES)
    view: bytes | None = None  # the full-resolution viewing copy (STORE_SLICE_VIEWS)


@dataclass
class Work:
    """One job of a run: its plan, what is left to predict, and what it stored."""

    started: lifecycle.Started
    todo: list[SliceSource] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    names: dict[str, SeriesName] = field(default_factory=dict)
    error: str | None = None  # the upload itself could not be read
    rows: list[SliceResult] = field(default_factory=list)
    resumed: bool = False  # an earlier attempt stored some slices
    left: int = 0  # slices not stored yet

    @property
    def job_id(self) -> str:
        return self.started.job_id


def run(claimed: list[lifecycle.Started], ctx: Context) -> dict[str, str]:
    """Run claimed jobs (one study, or single images of one model) to their end.

    Returns each job's outcome: ``succeeded``, ``failed``, ``cancelled``,
    ``handed_back`` or ``lost`` (another worker has it now).
    """
    if not claimed:
        return {}
    ctx = replace(ctx, stages=Stages())
    since = time.perf_counter()
    predictor = ctx.predictor(claimed[0].model_name)
    since = ctx.stages.add("model", since)
    works = [Work(c) for c in claimed]
    rules = rules_for_model(predictor.card.raw, predictor.card.path, ctx.settings)
    with ExitStack() as stack:
        for w in works:
            _plan(w, ctx, stack, rules)
        _record_plans(ctx, works)
        ctx.stages.add("plan", since)
        with Heartbeat(ctx.settings, [w.job_id for w in works]) as beat:
            stop = _predict_and_store(works, predictor, ctx, beat)
    outcomes = _end(works, stop, predictor, ctx)
    ctx.stages.log(len(works), sum(len(w.rows) for w in works))
    return outcomes


# -- plan ----------------------------------------------------------------------


def _plan(w: Work, ctx: Context, stack: ExitStack, rules: SeriesRules) -> None:
    """Open the upload and list its slices (the model's series rules choose the series);
    an unreadable upload fails only this job.

    The upload is read from a local file (S3: a temporary download, deleted
    when the run's ``ExitStack`` closes, before the job is closed).
    """
    key = w.started.upload_key
    try:
        path = stack.enter_context(ctx.storage.local_file(key))
        name = PurePath(key).name
        plan = stack.enter_context(plan_upload(path, ctx.settings, filename=name, rules=rules))
    except InvalidUpload as exc:
        w.error = str(exc)
        return
    except Exception as exc:  # e.g. the upload vanished: this job fails, not the run
        log.warning("job %s: upload unreadable: %s", w.job_id, type(exc).__name__)
        w.error = f"the upload could not be read ({type(exc).__name__})"
        return
    w.warnings = [{"source": k.source, "reason": k.reason} for k in plan.skipped]
    w.names = series_names(plan.series)
    done = _stored_indexes(ctx, w.job_id) if w.started.attempts > 1 else set()
    w.resumed = bool(done)
    w.todo = [s for s in plan.slices if s.index not in done]
    w.left = len(w.todo)


def _stored_indexes(ctx: Context, job_id: str) -> set[int]:
    """Slice indexes an earlier attempt stored (only asked for a job started again)."""
    with session_scope(ctx.settings.database_url) as s:
        q = select(SlicePrediction.slice_index).where(SlicePrediction.job_id == job_id)
        return set(s.scalars(q))


def _record_plans(ctx: Context, works: list[Work]) -> None:
    """Store slice counts and skipped members before inference, so progress shows.

    Only for jobs of more than one slice: a single image's counts are written
    once, when it is closed (a micro-batch would otherwise write every row twice).
    """
    values = [
        {"id": w.job_id, "total": len(w.todo), "warnings": w.warnings}
        for w in works
        if w.error is None and not w.resumed and len(w.todo) > 1
    ]
    if values:
        with session_scope(ctx.settings.database_url) as s:
            s.execute(lifecycle.bulk_update(), values)


# -- decode and predict --------------------------------------------------------


def _predict_and_store(
    works: list[Work], predictor: Predictor, ctx: Context, beat: Heartbeat
) -> Stop | None:
    """Predict batch after batch while a writer thread stores the previous ones
    (the batches predicted during a store go in one store: :data:`STORE_BACKLOG`).

    Returns why the run stopped early, or None once every slice is stored.
    """
    settings = ctx.settings
    by_id = {w.job_id: w for w in works}
    todo = [(w.job_id, s) for w in works for s in w.todo]
    size = batch_size(predictor, settings.inference_batch_size)
    stop: Stop | None = None
    writer = kept_pool("db-writer", 1)
    pending: Future[None] | None = None
    unsaved: list[Decoded] = []  # predicted while the previous write was in flight
    unsaved_rows: list[SliceResult] = []
    decoded = _decode_ahead(todo, predictor, ctx, (predictor.lanes + 1) * size)
    predicted = _predicted(_batches(decoded, size), predictor, ctx)
    try:
        for batch, rows in predicted:
            for d, row in zip(batch, rows, strict=True):
                by_id[d.job_id].rows.append(row)
                by_id[d.job_id].left -= 1
            unsaved += batch
            unsaved_rows += rows
            if pending is None or pending.done() or len(unsaved) >= STORE_BACKLOG * size:
                _wait_store(pending, ctx)
                pending = writer.submit(_store_batch, ctx, unsaved, unsaved_rows, by_id, beat)
                unsaved, unsaved_rows = [], []
            if (stop := beat.stop_reason()) is not None:
                break
    finally:  # the passes and decodes in flight end; their slices stay to do
        predicted.close()
        decoded.close()
        if pending is not None:  # no store of this run goes on after it, even on an error
            wait([pending])
    _wait_store(pending, ctx)
    if unsaved:
        _store_batch(ctx, unsaved, unsaved_rows, by_id, beat)
    return stop or beat.stop_reason()


def _predicted(
    batches: Iterator[list[Decoded]], predictor: Predictor, ctx: Context
) -> Generator[tuple[list[Decoded], list[SliceResult]], None, None]:
    """Each batch with its rows, in order, from up to ``predictor.lanes`` forward passes
    at once (FORWARD_LANES, worker/inference.py): the next batches are predicted while
    the caller hands this one to the writer."""
    if predictor.lanes <= 1:
        for batch in batches:
            yield batch, _timed_predict(batch, predictor, ctx.stages)
        return
    pool = kept_pool("forward", predictor.lanes)
    in_flight: deque[tuple[list[Decoded], Future[list[SliceResult]]]] = deque()
    try:
        for batch in batches:
            in_flight.append((batch, pool.submit(_timed_predict, batch, predictor, ctx.stages)))
            if len(in_flight) >= predictor.lanes:
                done, rows = in_flight.popleft()
                yield done, rows.result()
        while in_flight:
            done, rows = in_flight.popleft()
            yield done, rows.result()
    finally:  # closed early (a run that stops): no pass of this run goes on behind it
        wait([rows for _, rows in in_flight])


def _timed_predict(batch: list[Decoded], predictor: Predictor, stages: Stages) -> list[SliceResult]:
    """:func:`_predict`, counted in the ``forward`` stage and the batch metrics (with
    several lanes the stage sums their passes, so it can exceed the run's wall time)."""
    started = time.perf_counter()
    rows = _predict(batch, predictor)
    failed = sum(1 for d in batch if d.tensor is None)
    metrics.observe_batch(len(batch), failed, time.perf_counter() - started)
    stages.add("forward", started)
    return rows


def _wait_store(pending: Future[None] | None, ctx: Context) -> None:
    """Wait for the writer's store in flight, if any (its errors are raised here)."""
    if pending is not None:
        since = time.perf_counter()
        pending.result()
        ctx.stages.add("wait_store", since)


def _load(
    job_id: str, source: SliceSource, predictor: Predictor, settings: Settings, stages: Stages
) -> Decoded:
    """Decode and preprocess one slice; keep its 8-bit image; errors are recorded.

    One decode gives the model input and, with STORE_SLICE_VIEWS, the viewing
    copy for the slice viewer (ingest/views.py), both made here in a decode thread.
    The image is the model input's first channel as 8-bit gray (worker/images.py
    ``gray8``): stored raw in a pack, PNG-encoded only when someone asks for it.
    """
    since = time.perf_counter()
    try:
        views = settings.store_slice_views
        image, view = source.load_with_view() if views else (source.load(), None)
        tensor = preprocess(image, predictor.card.input)
        pixels = gray8(tensor) if settings.store_slice_images else None
    except SliceError as exc:
        return Decoded(job_id, source, None, str(exc))
    except Exception as exc:  # an unexpected decoder failure must not sink the study
        log.warning("slice %s: %s", source.source, exc)
        message = source.scrub(f"could not decode: {type(exc).__name__}: {exc}")
        return Decoded(job_id, source, None, message)
    finally:
        stages.add("decode", since)
    return Decoded(job_id, source, tensor, None, pixels, view)


_RUN_THREAD = threading.local()


def kept_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """A thread pool (decode, forward lanes, db-writer) of the thread running this run,
    kept for its next runs.

    A burst of single images is many small runs; starting their threads for each one
    cost CPU the burst needs (kept lanes alone: x1.05 images/s in ``bench.ab``). Per
    run thread, not per process: a study (Celery's task thread) and a micro-batch of
    single images (the claimer's thread) run at once and must not queue behind each
    other. A forked child starts with none (:func:`_forget_pools`).
    """
    pools: dict[tuple[str, int], ThreadPoolExecutor] = _RUN_THREAD.__dict__.setdefault(
        "pools", {}
    )
    if (name, threads) not in pools:
        pools[name, threads] = ThreadPoolExecutor(threads, thread_name_prefix=name)
    return pools[name, threads]


def _forget_pools() -> None:
    """After a fork: the parent's pool threads do not exist in the child."""
    global _RUN_THREAD
    _RUN_THREAD = threading.local()


os.register_at_fork(after_in_child=_forget_pools)


def _decode_ahead(
    todo: list[tuple[str, SliceSource]], predictor: Predictor, ctx: Context, window: int
) -> Generator[Decoded, None, None]:
    """Decode in a thread pool, at most ``window`` slices ahead of the consumer."""
    settings = ctx.settings
    pool = kept_pool("decode", max(1, settings.decode_threads))
    pending: deque[Future[Decoded]] = deque()
    sources = iter(todo)
    try:
        for job_id, source in islice(sources, window):
            pending.append(pool.submit(_load, job_id, source, predictor, settings, ctx.stages))
        while pending:
            since = time.perf_counter()
            decoded = pending.popleft().result()
            ctx.stages.add("wait_decode", since)
            nxt = next(sources, None)
            if nxt is not None:
                pending.append(pool.submit(_load, *nxt, predictor, settings, ctx.stages))
            yield decoded
    finally:  # a run that stops early: slices not started are dropped, the others end
        for future in pending:
            future.cancel()
        wait(pending)


def _batches(items: Iterable[Decoded], size: int) -> Iterator[list[Decoded]]:
    """Group an iterator into lists of ``size`` (the last may be shorter)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _predict(batch: list[Decoded], predictor: Predictor) -> list[SliceResult]:
    """Row values for one batch: one forward pass over the decodable slices."""
    good = [d.tensor for d in batch if d.tensor is not None]
    out = predictor.predict(np.stack(good)) if good else None
    classes = predictor.card.classes
    rows = []
    i = 0
    for d in batch:  # slices of several jobs may share an index: match by position
        if out is None or d.tensor is None:
            rows.append(_row(d))
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
    probabilities: dict[str, float] | None = None,
    label: str | None = None,
    ood: tuple[float, bool] | None = None,
) -> SliceResult:
    """One slice's result (db/records.py)."""
    s = d.source
    return SliceResult(
        slice_index=s.index,
        source=s.source,
        series_uid=s.series_uid,
        instance_number=s.instance_number,
        slice_position=s.slice_position,
        frame=s.frame,
        label=label,
        probabilities=probabilities,
        ood_score=None if ood is None else ood[0],
        out_of_distribution=None if ood is None else ood[1],
        error=d.error,
    )


# -- store ---------------------------------------------------------------------


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert rows (each with its ``job_id``), skipping slices a previous attempt stored.

    One statement executed for many parameter sets: SQLAlchemy compiles it once
    (cached) and pages the rows itself (``insertmanyvalues`` on PostgreSQL, well
    under its 65,535 parameters; ``executemany`` on SQLite). A multi-row
    ``.values(rows)`` would be compiled anew for every batch: 0.2 ms of Python
    a row against 0.04 (measured on SQLite), all of it holding the GIL the
    forward pass and the decode threads need.
    """
    if rows:
        session.execute(_insert_ignore(session.get_bind().dialect.name), rows)


@functools.cache
def _insert_ignore(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (job_id, slice_index) DO NOTHING for ``dialect``."""
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    stmt: Any = insert(SlicePrediction)
    return stmt.on_conflict_do_nothing(index_elements=["job_id", "slice_index"])


def _store_batch(
    ctx: Context,
    batch: list[Decoded],
    rows: list[SliceResult],
    works: dict[str, Work],
    beat: Heartbeat,
) -> None:
    """Store one batch's slice images and viewing copies (one pack per job), then its
    rows, each naming its pack, with progress and a heartbeat.

    Packs first: a slice counted as done has its image. A pack name is new for
    every write (storage/packs.py), so when another worker raced this one on
    the job, the rows that won the insert still point at the pack written with
    them. Progress is written here only for jobs with slices still to come; a
    job whose last slice is in this batch gets its final counts when it is closed.
    """
    since = time.perf_counter()
    packed = _store_packs(ctx.storage, batch)
    since = ctx.stages.add("store_images", since)
    values = [
        r.row(d.job_id, packed.get((d.job_id, d.source.index)))
        for d, r in zip(batch, rows, strict=True)
    ]
    with session_scope(ctx.settings.database_url) as s:
        insert_rows(s, values)
        for job_id in dict.fromkeys(d.job_id for d in batch):
            w = works[job_id]
            if w.left > 0:
                done, failed = _progress(s, w)
                alive = lifecycle.heartbeat(s, job_id, done=done, failed_slices=failed)
                beat.record(job_id, alive, s)
    ctx.stages.add("store_rows", since)


def _store_packs(storage: Storage, batch: list[Decoded]) -> dict[tuple[str, int], str]:
    """One pack per job of the batch with what its readable slices keep; the pack of
    each (job ID, slice index). Slices that failed to decode have none."""
    by_job: dict[str, list[packs.PackSlice]] = {}
    for d in batch:
        if d.tensor is not None and (d.pixels is not None or d.view is not None):
            by_job.setdefault(d.job_id, []).append(
                packs.PackSlice(d.source.index, d.pixels, d.view)
            )
    return {
        (job_id, index): name
        for job_id, slices in by_job.items()
        for index, name in packs.write(storage, job_id, slices).items()
    }


def _progress(s: Session, w: Work) -> tuple[int, int]:
    """(stored slices, stored slices with an error) of a job so far."""
    if w.resumed:  # an earlier attempt's rows count too
        return lifecycle.stored_counts(s, w.job_id)
    return len(w.rows), sum(1 for r in w.rows if r.error)


# -- end -----------------------------------------------------------------------


def _end(
    works: list[Work], stop: Stop | None, predictor: Predictor, ctx: Context
) -> dict[str, str]:
    """Close finished jobs (summary, heat maps, end) and deal with the ones that stopped."""
    finished = [w for w in works if w.error is not None or w.left == 0]
    if stop is Stop.CANCELLED or stop is Stop.LOST:
        finished = []  # a single study: its end is below
    ends = _finish(finished, predictor, ctx)
    outcomes = {w.job_id: str(ends[w.job_id].status) for w in finished}
    since = time.perf_counter()
    moved = set(ending.close(ctx.settings, ctx.storage, ends))
    ctx.stages.add("close", since)
    for job_id in list(outcomes):
        if job_id not in moved:
            outcomes[job_id] = "lost"
    for w in works:
        if w.job_id not in outcomes:
            outcomes[w.job_id] = _stopped(w, stop, ctx)
    return outcomes


def _finish(works: list[Work], predictor: Predictor, ctx: Context) -> dict[str, ending.End]:
    """Each finished job's end: its verdict (heat maps stored first), or why it failed."""
    ends: dict[str, ending.End] = {}
    summaries: dict[str, dict[str, Any]] = {}
    since = time.perf_counter()
    for w in works:
        rows = _all_rows(ctx, w)
        progress: dict[str, Any] = {
            "total": len(rows),
            "done": len(rows),
            "failed_slices": sum(1 for r in rows if r.error),
            "warnings": w.warnings,
        }
        attempt = w.started.attempts
        if (error := w.error or _all_failed(rows)) is not None:
            ends[w.job_id] = ending.failed(error, attempt=attempt, **progress)
            continue
        summary = summarize(rows, predictor.card, ctx.settings, len(w.warnings), w.names)
        summaries[w.job_id] = summary
        ends[w.job_id] = ending.succeeded(summary, attempt=attempt, **progress)
    since = ctx.stages.add("summary", since)
    if summaries and _heatmaps(works, ctx.settings):
        store_heatmaps(summaries, predictor, ctx.storage, ctx.settings)
        ctx.stages.add("heatmaps", since)
    return ends


def _all_rows(ctx: Context, w: Work) -> list[SliceResult]:
    """Every stored slice of the job (from the database when it was resumed)."""
    if w.resumed:
        with session_scope(ctx.settings.database_url) as s:
            q = select(SlicePrediction).where(SlicePrediction.job_id == w.job_id)
            return [SliceResult.of(r) for r in s.scalars(q.order_by(SlicePrediction.slice_index))]
    return w.rows


def _heatmaps(works: list[Work], settings: Settings) -> bool:
    """Heat maps for studies; for single images only with HEATMAPS_FOR_IMAGES."""
    if not settings.heatmap_slices_per_series:
        return False
    study = any(w.started.kind == JobKind.STUDY for w in works)
    return study or settings.heatmaps_for_images


def _all_failed(rows: list[SliceResult]) -> str | None:
    """The job's error when none of its slices could be read."""
    if not rows:
        return "the upload holds no slice"
    if all(r.error for r in rows):
        return f"no slice could be decoded: {rows[0].error}"
    return None


def _stopped(w: Work, stop: Stop | None, ctx: Context) -> str:
    """End or hand back a job that stopped before its last slice; its outcome."""
    if stop is Stop.CANCELLED:
        moved = ending.close(ctx.settings, ctx.storage, {w.job_id: ending.cancelled()})
        log.info("job %s cancelled after its current batch", w.job_id)
        return "cancelled" if moved else "lost"
    if stop is Stop.SHUTDOWN:
        with session_scope(ctx.settings.database_url) as s:
            handed_back = lifecycle.hand_back(s, w.job_id)
        if handed_back:
            metrics.HANDED_BACK.inc()
            try:
                ctx.republish(w.job_id, w.started.kind, w.started.model_name)
            except Exception as exc:  # broker away: the job is queued, the sweeper publishes it
                log.warning("job %s: republish failed (%s); left to the sweeper", w.job_id, exc)
        log.info("job %s handed back to the queue: this worker is stopping", w.job_id)
        return "handed_back"
    log.info("job %s is no longer this worker's (taken over or ended elsewhere)", w.job_id)
    return "lost"


def fail(ctx: Context, started: lifecycle.Started, message: str) -> bool:
    """End a job this worker started as failed (without running it); True if it moved."""
    end = ending.failed(message, attempt=started.attempts)
    return bool(ending.close(ctx.settings, ctx.storage, {started.job_id: end}))


def fail_running(ctx: Context, job_id: str, message: str) -> bool:
    """End a running job as failed after an error outside the stages; True if it moved."""
    return bool(ending.close(ctx.settings, ctx.storage, {job_id: ending.failed(message)}))


# -- heartbeat -----------------------------------------------------------------


class Heartbeat:
    """Beats for a run's jobs from a thread, and says whether the run should stop.

    Stored batches beat too (with progress); the thread covers long phases
    without batches (a large archive's plan, a model load), so the sweeper
    only ever takes over jobs whose process is really gone.
    """

    def __init__(self, settings: Settings, job_ids: list[str]) -> None:
        self.settings = settings
        self.job_ids = job_ids
        self._cancel: set[str] = set()
        self._lost: set[str] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.settings.heartbeat_interval_s):
            try:
                with session_scope(self.settings.database_url) as s:
                    for job_id in self.job_ids:
                        self.record(job_id, lifecycle.heartbeat(s, job_id), s)
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("heartbeat failed: %s", type(exc).__name__)

    def record(self, job_id: str, alive: bool, s: Session) -> None:
        """Remember a heartbeat's answer (False: cancel requested, or no longer ours)."""
        if alive:
            return
        row = s.execute(
            select(Job.status, Job.cancel_requested).where(Job.id == job_id)
        ).one_or_none()
        if row is not None and row.status == JobStatus.RUNNING and row.cancel_requested:
            self._cancel.add(job_id)
        else:
            self._lost.add(job_id)

    def stop_reason(self) -> Stop | None:
        """Why the run should stop now, if it should (checked between batches).

        A run of several single images is never stopped for one of them: each
        is one slice, so it ends with the batch.
        """
        if SHUTDOWN.is_set():
            return Stop.SHUTDOWN
        if len(self.job_ids) != 1:
            return None
        if self._cancel:
            return Stop.CANCELLED
        if self._lost:
            return Stop.LOST
        return None
