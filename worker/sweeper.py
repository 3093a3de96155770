"""The sweeper: recovers stranded jobs and removes what nobody will ask for again.

Every worker's main process runs :func:`sweep` every ``SWEEP_INTERVAL_S``
(worker/signals.py starts the thread); a Redis lock lets one sweep run at a
time across all workers and hosts of a queue. One sweep:

1. **stale running jobs**: a running job whose heartbeat is older than
   ``STALE_AFTER_S`` (its worker was killed, its host died, the database was
   away) goes back to ``queued`` and is published again; the next attempt
   continues from the stored slices. Attempts count, so a job that kills its
   worker every time ends ``failed`` after ``MAX_ATTEMPTS``.
2. **queued jobs missing from the broker**: a job queued for longer than
   ``STALE_AFTER_S`` whose ID is neither waiting in the queue nor held
   (unacknowledged) by a worker is published again (a Redis that lost its
   data, a publish that failed after the row was committed); for single
   images, the oldest of each model is.
3. **orphaned uploads**: job folders (S3: job key prefixes) last written more
   than ``ORPHAN_UPLOAD_AGE_S`` ago with no job row (the API died mid-submit)
   are removed, partial files and unfinished S3 multipart uploads included.
4. **retention**: jobs that ended more than ``RETENTION_DAYS`` ago are deleted
   with their results and files (0 keeps them forever).

Everything here is idempotent: a duplicate publish finds the job running with
a fresh heartbeat, or ended, and starts nothing of its own (a single image's
delivery may pass the doorbell on, worker/microbatch.py). Queued single images
usually have no message of their own (config/doorbell.py): step 2 rings their
model's doorbell once instead of publishing each.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from redis import Redis
from sqlalchemy import delete, select

from config import Settings
from config.doorbell import ring, rings
from db import lifecycle
from db.models import TERMINAL_STATUSES, Job, JobKind, utcnow
from db.session import session_scope
from storage import Storage, open_storage

log = logging.getLogger(__name__)
LOCK_PREFIX = "lungct:sweeper:"
UNACKED_KEY = "unacked"  # kombu's Redis transport: messages delivered but not acknowledged
UNACKED_INDEX_KEY = "unacked_index"  # ... and when each was delivered


@dataclass
class SweepReport:
    """What one sweep did (job IDs only: no patient data)."""

    requeued: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.requeued, self.republished, self.orphans_removed, self.expired))


def sweep(settings: Settings, redis: Redis, publish: Callable[[str], None]) -> SweepReport | None:
    """Run one sweep unless another process holds the lock; None if skipped."""
    lock = redis.lock(
        LOCK_PREFIX + settings.celery_queue, timeout=max(60.0, 3 * settings.sweep_interval_s)
    )
    if not lock.acquire(blocking=False):
        return None
    try:
        return _sweep(settings, redis, publish)
    finally:
        try:
            lock.release()
        except Exception:  # the lock expired meanwhile: nothing to release
            log.debug("sweeper lock already released")


def _sweep(settings: Settings, redis: Redis, publish: Callable[[str], None]) -> SweepReport:
    report = SweepReport()
    storage = open_storage(settings)
    stale_before = utcnow() - timedelta(seconds=settings.stale_after_s)
    with session_scope() as s:
        for job_id in lifecycle.stale_running(s, stale_before):
            if lifecycle.requeue(s, job_id, stale_before=stale_before):
                report.requeued.append(job_id)
    for job_id in report.requeued:
        publish(job_id)
    with session_scope() as s:
        waiting = lifecycle.waiting_since(s, stale_before)
    if waiting:
        in_broker = broker_job_ids(redis, settings.celery_queue, settings.stale_after_s)
        missing = [w for w in waiting if w.job_id not in in_broker]
        report.republished = _republish(missing, settings, publish)
    report.orphans_removed = _remove_orphans(storage, settings.orphan_upload_age_s)
    if settings.retention_days > 0:
        report.expired = _expire(storage, settings.retention_days)
    if report:
        log.info(
            "sweep: requeued %s, republished %s, orphaned uploads removed %s, expired %s",
            report.requeued,
            report.republished,
            len(report.orphans_removed),
            len(report.expired),
        )
    return report


def _republish(
    missing: list[lifecycle.Waiting], settings: Settings, publish: Callable[[str], None]
) -> list[str]:
    """Publish queued jobs that have no message; the IDs published.

    Single images mostly have none by design (config/doorbell.py): for them the
    doorbell of their model is rung once, for the oldest, whose delivery claims
    the rest (a pending message, if the bell is still set, will).
    """
    published: list[str] = []
    rung: set[str] = set()
    for w in missing:  # oldest first
        image = w.kind == JobKind.IMAGE and rings(settings)
        if image and w.model_name in rung:
            continue
        try:
            if image:
                rung.add(w.model_name)
                if not ring(settings, w.job_id, w.model_name, publish):
                    continue
            else:
                publish(w.job_id)
        except Exception as exc:  # the broker hiccuped: the next sweep tries again
            log.warning("sweep: could not publish %s: %s", w.job_id, type(exc).__name__)
            continue
        published.append(w.job_id)
    return published


def broker_job_ids(redis: Redis, queue: str, held_for_s: float | None = None) -> set[str]:
    """Task (= job) IDs waiting in ``queue`` or delivered and not yet acknowledged.

    kombu keeps a queue as a Redis list (priority levels as ``queue\\x06\\x16N``)
    of JSON messages, and delivered messages in the ``unacked`` hash as
    ``[message, exchange, routing_key]`` with their delivery time in the
    ``unacked_index`` sorted set. With ``held_for_s``, a delivery older than that
    does not count: a worker that died holding a prefetched message (its job
    still queued) would otherwise hide the job until the visibility timeout;
    publishing such a job again is harmless.
    """
    name = queue.encode()
    messages: list[object] = []
    for key in redis.scan_iter(match=f"{queue}*", count=100):
        priority_list = key == name or key.startswith(name + b"\x06\x16")
        if priority_list and redis.type(key) == b"list":
            messages += [_json(raw) for raw in redis.lrange(key, 0, -1)]
    for raw in _unacked(redis, held_for_s):
        entry = _json(raw)
        messages.append(entry[0] if isinstance(entry, list) and entry else None)
    return {m["headers"]["id"] for m in messages if _has_task_id(m)}


def _unacked(redis: Redis, held_for_s: float | None) -> list[bytes]:
    """Unacknowledged deliveries, only those younger than ``held_for_s`` if given."""
    if held_for_s is None:
        return list(redis.hvals(UNACKED_KEY))
    recent = redis.zrangebyscore(UNACKED_INDEX_KEY, time.time() - held_for_s, "+inf")
    return [raw for raw in redis.hmget(UNACKED_KEY, recent) if raw is not None] if recent else []


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _has_task_id(message: object) -> bool:
    headers = message.get("headers") if isinstance(message, dict) else None
    return isinstance(headers, dict) and isinstance(headers.get("id"), str)


def _remove_orphans(storage: Storage, age_s: float) -> list[str]:
    """Remove old job uploads that no job row refers to (a submit that never finished)."""
    candidates = list(storage.job_ids(older_than_s=age_s))
    if not candidates:
        return []
    with session_scope() as s:
        known = set(s.scalars(select(Job.id).where(Job.id.in_(candidates))))
    orphans = [c for c in candidates if c not in known]
    for job_id in orphans:
        storage.discard(job_id)
    return orphans


def _expire(storage: Storage, retention_days: float) -> list[str]:
    """Delete jobs that ended before the retention period, with results and files."""
    cutoff = utcnow() - timedelta(days=retention_days)
    with session_scope() as s:
        expired = list(
            s.scalars(
                select(Job.id).where(
                    Job.status.in_([str(t) for t in TERMINAL_STATUSES]), Job.finished_at < cutoff
                )
            )
        )
        if expired:
            s.execute(delete(Job).where(Job.id.in_(expired)))
    for job_id in expired:
        storage.discard(job_id)
    return expired
