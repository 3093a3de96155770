"""The sweeper: recovers stranded jobs and removes what nobody will ask for again.

Every worker's main process runs :func:`sweep` every ``SWEEP_INTERVAL_S``
(worker/signals.py starts the thread); a Redis lock lets one sweep run at a
time across all workers and hosts of a queue. One sweep:

1. **stale running jobs**: a running job whose heartbeat is older than
   ``STALE_AFTER_S`` (its worker was killed, its host died, the database was
   away) goes back to ``queued`` and is queued again; the next attempt
   continues from the stored slices. Attempts count, so a job that kills its
   worker every time ends ``failed`` after ``MAX_ATTEMPTS``.
2. **queued jobs that may have lost their place**: a job queued and untouched
   for ``STALE_AFTER_S`` (Redis lost its data, the API died between its commit
   and the push, a worker died holding a prefetched message) is queued again.
   A single image is pushed to its model's list only when its ID is not in
   that list (config/image_queue.py: every queued image has an entry). A study
   gets its Celery message again, and the job is touched so that it is
   published at most once per ``STALE_AFTER_S``: a duplicate delivery finds
   it started or ended and does nothing.
3. **orphaned uploads**: job folders (S3: job key prefixes) last written more
   than ``ORPHAN_UPLOAD_AGE_S`` ago with no job row (the API died mid-submit)
   are removed, partial files and unfinished S3 multipart uploads included, and
   so are spooled uploads last written that long ago (an API process killed
   while one arrived: storage ``spool``).
4. **retention**: jobs that ended more than ``RETENTION_DAYS`` ago are deleted
   with their results and files (0 keeps them forever).

Everything here is idempotent; nothing reads another library's private data.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from redis import Redis
from sqlalchemy import select

from config import image_queue
from db import ending, lifecycle
from db.models import TERMINAL_STATUSES, Job, JobKind, utcnow
from db.session import session_scope
from worker.runner import Context

log = logging.getLogger(__name__)
LOCK_PREFIX = "lungct:sweeper:"


@dataclass
class SweepReport:
    """What one sweep did (job IDs only: no patient data)."""

    requeued: list[lifecycle.Waiting] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.requeued, self.republished, self.orphans_removed, self.expired))


def sweep(ctx: Context, redis: Redis) -> SweepReport | None:
    """Run one sweep unless another process holds the lock; None if skipped."""
    settings = ctx.settings
    lock = redis.lock(
        LOCK_PREFIX + settings.celery_queue, timeout=max(60.0, 3 * settings.sweep_interval_s)
    )
    if not lock.acquire(blocking=False):
        return None
    try:
        return _sweep(ctx)
    finally:
        try:
            lock.release()
        except Exception:  # the lock expired meanwhile: nothing to release
            log.debug("sweeper lock already released")


def _sweep(ctx: Context) -> SweepReport:
    settings = ctx.settings
    report = SweepReport()
    stale_before = utcnow() - timedelta(seconds=settings.stale_after_s)
    with session_scope(settings.database_url) as s:
        stale = lifecycle.stale_running(s, stale_before)
        report.requeued = [w for w in stale if lifecycle.requeue(s, w.job_id, stale_before)]
    for w in report.requeued:
        ctx.republish(w.job_id, w.kind, w.model_name)
    with session_scope(settings.database_url) as s:
        waiting = lifecycle.waiting_since(s, stale_before)
    report.republished = _republish(ctx, waiting)
    report.orphans_removed = _remove_orphans(ctx, settings.orphan_upload_age_s)
    if settings.retention_days > 0:
        report.expired = _expire(ctx, settings.retention_days)
    if report:
        log.info(
            "sweep: requeued %s, republished %s, orphaned uploads removed %s, expired %s",
            [w.job_id for w in report.requeued],
            report.republished,
            len(report.orphans_removed),
            len(report.expired),
        )
    return report


def _republish(ctx: Context, waiting: list[lifecycle.Waiting]) -> list[str]:
    """Queue again the jobs that may have lost their place (module docstring, step 2)."""
    images: dict[str, list[str]] = defaultdict(list)
    studies: list[str] = []
    for w in waiting:
        if w.kind == JobKind.IMAGE:
            images[w.model_name].append(w.job_id)
        else:
            studies.append(w.job_id)
    published: list[str] = []
    for model, ids in images.items():
        try:
            listed = image_queue.waiting(ctx.settings, model)
            missing = [i for i in ids if i not in listed]
            image_queue.push(ctx.settings, missing, model)
            published += missing
        except Exception as exc:  # Redis hiccuped: the next sweep tries again
            log.warning("sweep: could not queue images of %s again: %s", model, exc)
    if studies:
        with session_scope(ctx.settings.database_url) as s:
            lifecycle.touch_queued(s, studies)
    for job_id in studies:
        try:
            ctx.republish(job_id, JobKind.STUDY, "")
            published.append(job_id)
        except Exception as exc:  # the broker hiccuped: the next sweep tries again
            log.warning("sweep: could not publish %s: %s", job_id, type(exc).__name__)
    return published


def _remove_orphans(ctx: Context, age_s: float) -> list[str]:
    """Remove old job uploads that no job row refers to (a submit that never finished)."""
    if spooled := ctx.storage.remove_stale_spool(age_s):
        log.info("sweep: removed %d spooled uploads left by a killed API process", spooled)
    candidates = list(ctx.storage.job_ids(older_than_s=age_s))
    if not candidates:
        return []
    with session_scope(ctx.settings.database_url) as s:
        known = set(s.scalars(select(Job.id).where(Job.id.in_(candidates))))
    orphans = [c for c in candidates if c not in known]
    ending.remove(ctx.settings, ctx.storage, orphans)
    return orphans


def _expire(ctx: Context, retention_days: float) -> list[str]:
    """Delete jobs that ended before the retention period, with results and files."""
    cutoff = utcnow() - timedelta(days=retention_days)
    with session_scope(ctx.settings.database_url) as s:
        expired = list(
            s.scalars(
                select(Job.id).where(
                    Job.status.in_([str(t) for t in TERMINAL_STATUSES]), Job.finished_at < cutoff
                )
            )
        )
    ending.remove(ctx.settings, ctx.storage, expired)
    return expired
