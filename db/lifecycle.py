"""The job state machine: the one place where a job's status changes.

    queued --start--> running --succeed--> succeeded
      |  ^              |  |---fail------> failed
      |  |--requeue-----|  |---cancelled-> cancelled   (after a cancel request)
      |---cancel / fail--------------------> cancelled / failed

The API (submit, cancel) and the worker (start, heartbeat, finish, hand back)
and the sweeper (requeue stale jobs) all call these functions. Every change
is a conditional UPDATE ("... WHERE status IN allowed"), atomic on SQLite and
PostgreSQL alike, so two deliveries of one job, a cancel racing a finish, or
two sweepers cannot both move a job, and nothing undoes a terminal state.

Each function takes the caller's session (one transaction per call site) and
returns whether the job moved; the caller releases the upload
(``storage.Storage.release``) after a terminal move has been committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from db.models import ACTIVE_STATUSES, Job, JobKind, JobStatus, as_utc, utcnow


@dataclass(frozen=True)
class Started:
    """What a worker needs to run a job it has just started."""

    job_id: str
    model_name: str
    upload_key: str
    attempts: int
    kind: str


def _move(
    s: Session, job_id: str, allowed: tuple[JobStatus, ...], *extra: Any, **values: Any
) -> bool:
    """Set ``values`` only if the job is in one of ``allowed`` (and matches ``extra``)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([str(a) for a in allowed]), *extra)
        .values(updated_at=utcnow(), **values)
        # No loaded Job is kept in step (a caller that holds one refreshes it):
        # evaluating the WHERE against the session was a good share of a
        # micro-batch's cost, one UPDATE per member.
        .execution_options(synchronize_session=False)
    )
    return s.execute(stmt).rowcount == 1


def start(s: Session, job_id: str, stale_after_s: float) -> Started | None:
    """queued -> running, or take over a running job whose heartbeat is stale.

    A redelivered message of a job that a live worker is running (fresh
    heartbeat) starts nothing, so one job never runs twice at once.
    Returns None when there is nothing to do (unknown, live elsewhere, ended).
    """
    now = utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    if not _startable(s, job_id, stale):
        return None  # decided by a read: no write lock for the many no-op deliveries
    row = s.execute(
        _start_update(now).where(
            Job.id == job_id,
            Job.status.in_([str(a) for a in ACTIVE_STATUSES]),
            or_(
                Job.status == JobStatus.QUEUED,
                Job.heartbeat_at.is_(None),
                Job.heartbeat_at < stale,
            ),
        )
    ).one_or_none()
    return None if row is None else Started(*row)


def start_queued_images(s: Session, model_name: str, limit: int) -> list[Started]:
    """queued -> running for the oldest queued single-image jobs of ``model_name``.

    The micro-batch claim (worker/microbatch.py): one UPDATE for all of them,
    atomic per job like :func:`start`, so two workers never claim one job.
    """
    oldest = (
        select(Job.id)
        .where(*_queued_image(), Job.model_name == model_name)
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL: pass over rows another worker claims
    )
    rows = s.execute(
        _start_update(utcnow()).where(Job.id.in_(oldest), Job.status == JobStatus.QUEUED)
    ).all()
    return [Started(*row) for row in rows]


def _queued_image() -> tuple[Any, Any]:
    """The WHERE terms of a queued single-image job."""
    return Job.status == JobStatus.QUEUED, Job.kind == JobKind.IMAGE


def queued_image_models(s: Session) -> list[str]:
    """The models that queued single-image jobs wait for (the doorbell, config/doorbell.py)."""
    return list(s.scalars(select(Job.model_name).where(*_queued_image()).distinct()))


def oldest_queued_image(s: Session, model_name: str) -> str | None:
    """The oldest queued single-image job of ``model_name``, if any."""
    q = select(Job.id).where(*_queued_image(), Job.model_name == model_name)
    return s.scalar(q.order_by(Job.created_at).limit(1))


def _start_update(now: datetime) -> Any:
    """The UPDATE that starts jobs, returning what the worker needs (one statement)."""
    return (
        update(Job)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .returning(Job.id, Job.model_name, Job.upload_key, Job.attempts, Job.kind)
        .execution_options(synchronize_session=False)
    )


def _startable(s: Session, job_id: str, stale: datetime) -> bool:
    """Whether :func:`start` could move the job (the UPDATE decides for certain)."""
    row = s.execute(select(Job.status, Job.heartbeat_at).where(Job.id == job_id)).one_or_none()
    if row is None or row.status not in ACTIVE_STATUSES:
        return False
    beat = row.heartbeat_at
    return row.status == JobStatus.QUEUED or beat is None or as_utc(beat) < stale


def heartbeat(s: Session, job_id: str, **progress: Any) -> bool:
    """Record that the running job is alive (and its progress); False if it is no longer ours.

    Returns True when the job is still running and nobody asked to cancel it.
    """
    moved = _move(s, job_id, (JobStatus.RUNNING,), heartbeat_at=utcnow(), **progress)
    if not moved:
        return False
    return not s.scalar(select(Job.cancel_requested).where(Job.id == job_id))


def succeed(s: Session, job_id: str, summary: dict[str, Any], **progress: Any) -> bool:
    """running -> succeeded with the study summary (and final ``progress`` columns, if given)."""
    return _move(
        s,
        job_id,
        (JobStatus.RUNNING,),
        status=JobStatus.SUCCEEDED,
        summary=summary,
        error=None,
        finished_at=utcnow(),
        **progress,
    )


def fail(
    s: Session, job_id: str, message: str, *, running_only: bool = False, **progress: Any
) -> bool:
    """queued|running -> failed, with a message the client can read.

    Workers pass ``running_only``: a job they handed back or lost is not theirs to fail.
    """
    allowed = (JobStatus.RUNNING,) if running_only else ACTIVE_STATUSES
    return _move(
        s,
        job_id,
        allowed,
        status=JobStatus.FAILED,
        error=message,
        finished_at=utcnow(),
        **progress,
    )


def requeue(s: Session, job_id: str, stale_before: datetime | None = None) -> bool:
    """running -> queued, to be continued by any worker from the stored slices.

    Used when the job's worker died: by the sweeper (``stale_before``: only if
    the heartbeat really stopped) and for a lost pool child. The attempt
    counts, so a job that kills its worker again and again ends ``failed``
    at MAX_ATTEMPTS.
    """
    stale = (
        ()
        if stale_before is None
        else (or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),)
    )
    return _move(
        s, job_id, (JobStatus.RUNNING,), *stale, status=JobStatus.QUEUED, heartbeat_at=None
    )


def hand_back(s: Session, job_id: str) -> bool:
    """running -> queued by a worker that is shutting down; the attempt is given back.

    Stopping is not the job's fault, so it does not count towards MAX_ATTEMPTS.
    """
    return _move(
        s,
        job_id,
        (JobStatus.RUNNING,),
        status=JobStatus.QUEUED,
        attempts=Job.attempts - 1,
        heartbeat_at=None,
    )


def cancel(s: Session, job_id: str) -> JobStatus | None:
    """Cancel: a queued job ends at once; a running one is asked to stop after its batch.

    Returns the job's status after the call (``cancelled`` or ``running``), or
    None if the job had already ended.
    """
    if _move(s, job_id, (JobStatus.QUEUED,), status=JobStatus.CANCELLED, finished_at=utcnow()):
        return JobStatus.CANCELLED
    if _move(s, job_id, (JobStatus.RUNNING,), cancel_requested=True):
        return JobStatus.RUNNING
    return None


def cancelled(s: Session, job_id: str) -> bool:
    """running -> cancelled: the worker stopped a job whose cancel was requested."""
    return _move(
        s,
        job_id,
        (JobStatus.RUNNING,),
        Job.cancel_requested.is_(True),
        status=JobStatus.CANCELLED,
        finished_at=utcnow(),
    )


def stale_running(s: Session, stale_before: datetime) -> list[str]:
    """IDs of running jobs whose last heartbeat is older than ``stale_before``."""
    q = select(Job.id).where(
        Job.status == JobStatus.RUNNING,
        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
    )
    return list(s.scalars(q))


@dataclass(frozen=True)
class Waiting:
    """A job queued (and unchanged) for a while: what the sweeper needs to publish it."""

    job_id: str
    kind: str
    model_name: str


def waiting_since(s: Session, before: datetime) -> list[Waiting]:
    """Jobs queued (and unchanged) since before ``before``, oldest first."""
    q = (
        select(Job.id, Job.kind, Job.model_name)
        .where(Job.status == JobStatus.QUEUED, Job.updated_at < before)
        .order_by(Job.created_at)
    )
    return [Waiting(*row) for row in s.execute(q)]
