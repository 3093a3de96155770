"""Cross-request micro-batching: single-image jobs from many requests share one forward pass.

A single image costs one task, a few transactions and, above all, a forward
pass of its own; on a burst of uploads the model then runs on batches of one.
When a worker starts a single-image job it therefore also claims the other
single-image jobs for the same model that are waiting in the database (up to
``MICROBATCH_MAX_JOBS``; when others are waiting it gathers for at most
``MICROBATCH_WAIT_MS`` more, when none are it starts at once), runs
them through the model together, and ends each with its own result.

Every claimed job goes through the same state machine as any job (an atomic
conditional UPDATE, so two workers never claim one job; attempts count; the
claim sets the heartbeat, and a micro-batch is short enough to need no
heartbeat thread), so the recovery guarantees hold: a worker that dies
mid-batch leaves its jobs ``running`` with a stale heartbeat and the sweeper
requeues them. Most single images of a burst have no broker message of their
own (the doorbell, config/doorbell.py); a delivery that finds its own job
already taken passes the doorbell on (:func:`pass_on`) rather than running
other jobs under its own task. A slice that cannot be decoded fails only its
own job.
Results are the same as unbatched: the model sees each image alone along the
batch dimension.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import PurePath

from config import Settings
from config.doorbell import answer, answer_all, ring, rings
from db import lifecycle
from db.models import SlicePrediction
from db.session import session_scope
from ingest import InvalidUpload, plan_upload
from storage import Storage
from worker import metrics
from worker.images import store_heatmaps, store_images, store_views  # VIEWER HOOK
from worker.inference import Predictor, get_predictor
from worker.pipeline import (
    Decoded,
    JobFailed,
    _insert_ignore,
    _load,
    _predict,
    closed,
    fail_job,
)
from worker.summary import SeriesName, series_names, summarize

log = logging.getLogger(__name__)
CLAIM_POLL_S = 0.002


@dataclass
class Member:
    """One job of a micro-batch: its decoded slices, then its rows."""

    started: lifecycle.Started
    decoded: list[Decoded] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    names: dict[str, SeriesName] = field(default_factory=dict)
    error: str | None = None  # the upload itself could not be read
    rows: list[dict] = field(default_factory=list)


def run_group(
    first: lifecycle.Started,
    settings: Settings,
    storage: Storage,
    publish: Callable[[str], None],
) -> None:
    """Run ``first`` with every single-image job that can join it; raise if ``first`` failed."""
    room = settings.microbatch_max_jobs - 1
    others = claim(first.model_name, settings, publish, room)
    outcomes = _run([Member(first)] + [Member(c) for c in others], settings, storage)
    if outcomes[0] is not None:
        raise JobFailed(outcomes[0])


def _run(members: list[Member], settings: Settings, storage: Storage) -> list[str | None]:
    """Decode, predict, store and close one micro-batch; each member's error (None: succeeded)."""
    log.info("micro-batch of %d single-image jobs", len(members))
    predictor = get_predictor(members[0].started.model_name)
    with ExitStack() as plans:
        _decode(members, predictor, settings, storage, plans)
        _predict_all(members, predictor, settings)
    if settings.store_slice_images:
        for m in members:
            store_images(storage, m.started.job_id, m.decoded)
            store_views(storage, m.started.job_id, m.decoded)  # VIEWER HOOK
    outcomes = _store(members, predictor, settings)
    ended = {
        m.started.job_id: "failed" if error else "succeeded"
        for m, (moved, error, _) in zip(members, outcomes, strict=True)
        if moved
    }
    closed(ended, storage, settings)
    summaries = {
        m.started.job_id: summary
        for m, (moved, _, summary) in zip(members, outcomes, strict=True)
        if moved and summary is not None
    }
    if summaries and settings.heatmaps_for_images and settings.heatmap_slices_per_series:
        store_heatmaps(summaries, predictor, storage, settings)
    return [error for _, error, _ in outcomes]


def claim(
    model_name: str, settings: Settings, publish: Callable[[str], None], room: int
) -> list[lifecycle.Started]:
    """Start up to ``room`` queued single-image jobs of ``model_name``, waiting a moment for more.

    Answers the model's doorbell first, so single images submitted from now on
    ring again; a claim that fills the batch, or fails, rings for the rest.
    """
    claimed: list[lifecycle.Started] = []
    deadline = time.monotonic() + settings.microbatch_wait_ms / 1000
    doorbell = rings(settings)  # off: every single image has its own message
    if doorbell:
        answer(settings, model_name)
    try:
        while room > len(claimed):
            with session_scope() as s:
                claimed += lifecycle.start_queued_images(s, model_name, room - len(claimed))
            # Wait for more only during a burst: alone, a job goes at once (no latency cost).
            if not claimed or time.monotonic() >= deadline:
                break
            time.sleep(CLAIM_POLL_S)
    except Exception:  # images that skipped their message on the answered bell need one
        if doorbell:
            ring_for_waiting(model_name, settings, publish)
        raise
    if doorbell and room and len(claimed) >= room:
        ring_for_waiting(model_name, settings, publish)
    over = [c for c in claimed if c.attempts > settings.max_attempts]
    for c in over:
        fail_job(c.job_id, f"started {settings.max_attempts} times", settings)
    return [c for c in claimed if c not in over]


def pass_on(settings: Settings, model_name: str | None, publish: Callable[[str], None]) -> None:
    """For a delivery that will not claim: answer its doorbell and ring for who still waits.

    A single image's message may have rung the doorbell (config/doorbell.py);
    when its job was already taken (or deleted, or has failed too often) the
    delivery does not run anyone else's job under its own task, it publishes a
    message for the oldest waiting single image instead, whose delivery then
    starts that job and claims the rest. ``None``: the job's model is unknown
    (it was deleted), so every doorbell of the queue is answered. Nothing to
    do without the doorbell (MICROBATCH_DOORBELL off): every image has its message.
    """
    if not rings(settings):
        return
    if model_name is None:
        answer_all(settings)
        try:
            with session_scope() as s:
                models = lifecycle.queued_image_models(s)
        except Exception as exc:  # the sweeper republishes them
            log.warning("could not look for waiting single images: %s", type(exc).__name__)
            return
    else:
        answer(settings, model_name)
        models = [model_name]
    for name in models:
        ring_for_waiting(name, settings, publish)


def ring_for_waiting(model_name: str, settings: Settings, publish: Callable[[str], None]) -> None:
    """Ring for the oldest queued single image of ``model_name``, if any (never raises)."""
    try:
        with session_scope() as s:
            waiting = lifecycle.oldest_queued_image(s, model_name)
        if waiting is not None:
            ring(settings, waiting, model_name, publish)
    except Exception as exc:  # the broker or database hiccuped: the sweeper republishes them
        log.warning("could not ring for waiting single images: %s", type(exc).__name__)


def _decode(
    members: list[Member],
    predictor: Predictor,
    settings: Settings,
    storage: Storage,
    plans: ExitStack,
) -> None:
    """Plan each upload and decode every slice of every member in a thread pool."""
    jobs = []
    for m in members:
        key = m.started.upload_key
        try:
            path = plans.enter_context(storage.local_file(key))
            plan = plans.enter_context(plan_upload(path, settings, filename=PurePath(key).name))
        except InvalidUpload as exc:
            m.error = str(exc)
            continue
        except Exception as exc:  # e.g. the upload vanished: this job fails, not the batch
            log.warning("job %s: upload unreadable: %s", m.started.job_id, type(exc).__name__)
            m.error = f"the upload could not be read ({type(exc).__name__})"
            continue
        m.warnings = [{"source": k.source, "reason": k.reason} for k in plan.skipped]
        m.names = series_names(plan.series)
        jobs.append((m, plan.slices))
    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        futures = [(m, pool.submit(_load, src, predictor)) for m, slices in jobs for src in slices]
        for m, future in futures:
            m.decoded.append(future.result())


def _predict_all(members: list[Member], predictor: Predictor, settings: Settings) -> None:
    """Forward passes over all members' slices together, INFERENCE_BATCH_SIZE at a time."""
    flat = [(m, d) for m in members for d in m.decoded]
    for chunk in _chunks(flat, settings.inference_batch_size):
        started = time.perf_counter()
        rows = _predict([d for _, d in chunk], predictor)
        failed = sum(1 for _, d in chunk if d.tensor is None)
        metrics.observe_batch(len(chunk), failed, time.perf_counter() - started)
        for (m, _), row in zip(chunk, rows, strict=True):
            m.rows.append(row)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _store(
    members: list[Member], predictor: Predictor, settings: Settings
) -> list[tuple[bool, str | None, dict | None]]:
    """Every member's rows, progress and verdict in one transaction.

    One (ended, error, summary) per member.
    """
    outcomes = []
    with session_scope() as s:
        rows = [{"job_id": m.started.job_id, **r} for m in members for r in m.rows]
        if rows:
            _insert_ignore(s, rows)
        for m in members:
            job_id = m.started.job_id
            progress = {
                "total": len(m.rows),
                "done": len(m.rows),
                "failed_slices": sum(1 for r in m.rows if r["error"]),
                "warnings": m.warnings,
            }
            error = m.error or _all_failed(m)
            if error is not None:
                ended = lifecycle.fail(s, job_id, error, running_only=True, **progress)
                outcomes.append((ended, error, None))
                continue
            slices = [SlicePrediction(job_id=job_id, **r) for r in m.rows]
            summary = summarize(slices, predictor.card, settings, len(m.warnings), m.names)
            outcomes.append((lifecycle.succeed(s, job_id, summary, **progress), None, summary))
    return outcomes


def _all_failed(m: Member) -> str | None:
    """The job's error when none of its slices could be read."""
    if not m.rows:
        return "the upload holds no slice"
    if all(r["error"] for r in m.rows):
        return f"no slice could be decoded: {m.rows[0]['error']}"
    return None
