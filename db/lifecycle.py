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

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement

from db.models import ACTIVE_STATUSES, Job, JobKind, JobStatus, SlicePrediction, as_utc, utcnow


@dataclass(frozen=True)
class Started:
    """What a worker needs to run a job it has just started."""

    job_id: str
    model_name: str
    upload_key: str
    attempts: int
    kind: str


def _move(
    s: Session,
    job_id: str,
    allowed: tuple[JobStatus, ...],
    *extra: Any,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Set ``values`` only if the job is in one of ``allowed`` (at ``attempt``, when given,
    and matching ``extra``).

    Plain values (no ``extra`` terms, no SQL expressions) go through one UPDATE
    compiled once per shape (:func:`_plain_move`): the worker closes every job
    of a micro-batch this way, and building and compiling an ORM UPDATE for
    each cost about 1 ms of the GIL a job (docs/benchmarks.md).
    """
    values["updated_at"] = utcnow()
    statuses = tuple(str(a) for a in allowed)
    if not extra and not any(isinstance(v, ClauseElement) for v in values.values()):
        stmt = _plain_move(statuses, attempt is not None, tuple(sorted(values)))
        params = {"move_id": job_id, **{f"set_{k}": v for k, v in values.items()}}
        if attempt is not None:
            params["move_attempt"] = attempt
        return cast(CursorResult[Any], s.execute(stmt, params)).rowcount == 1
    where = [Job.id == job_id, Job.status.in_(statuses), *extra]
    if attempt is not None:
        where.append(Job.attempts == attempt)
    stmt = (
        update(Job)
        .where(*where)
        .values(**values)
        # No loaded Job is kept in step (a caller that holds one refreshes it):
        # evaluating the WHERE against the session was a good share of a
        # micro-batch's cost, one UPDATE per member.
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], s.execute(stmt)).rowcount == 1


@functools.lru_cache(maxsize=64)
def _plain_move(statuses: tuple[str, ...], by_attempt: bool, columns: tuple[str, ...]) -> Any:
    """``UPDATE jobs SET <columns> WHERE id = :move_id AND status IN <statuses>
    [AND attempts = :move_attempt]``, on the table (no ORM step), values as parameters."""
    jobs = cast(Table, Job.__table__)
    stmt = update(jobs).where(jobs.c.id == bindparam("move_id"), jobs.c.status.in_(statuses))
    if by_attempt:
        stmt = stmt.where(jobs.c.attempts == bindparam("move_attempt"))
    return stmt.values({name: bindparam(f"set_{name}") for name in columns})


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


def start_images(s: Session, job_ids: Sequence[str]) -> list[Started]:
    """queued -> running for those of ``job_ids`` that are still queued single images.

    The micro-batch claim (config/image_queue.py): one UPDATE for all of them,
    atomic per job like :func:`start`, so two workers never start one job; an
    ID whose job was cancelled, deleted or already started is passed over.
    """
    if not job_ids:
        return []
    rows = s.execute(
        _start_update(utcnow()).where(
            Job.id.in_(list(job_ids)), Job.status == JobStatus.QUEUED, Job.kind == JobKind.IMAGE
        )
    ).all()
    return [Started(*row) for row in rows]


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


def succeed(
    s: Session,
    job_id: str,
    summary: dict[str, Any],
    *,
    attempt: int | None = None,
    **progress: Any,
) -> bool:
    """running -> succeeded with the study summary (and final ``progress`` columns, if given)."""
    return _move(
        s,
        job_id,
        (JobStatus.RUNNING,),
        attempt=attempt,
        status=JobStatus.SUCCEEDED,
        summary=summary,
        error=None,
        finished_at=utcnow(),
        **progress,
    )


def fail(
    s: Session,
    job_id: str,
    message: str,
    *,
    allowed: tuple[JobStatus, ...] = ACTIVE_STATUSES,
    attempt: int | None = None,
    **progress: Any,
) -> bool:
    """queued|running -> failed, with a message the client can read.

    Workers pass ``allowed=(RUNNING,)``: a job they handed back or lost is not
    theirs to fail. The API's enqueue failure passes ``(QUEUED,)``: a job a
    worker already started (the push did reach Redis) is not the API's to fail.
    """
    return _move(
        s,
        job_id,
        allowed,
        attempt=attempt,
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


def cancel_queued(s: Session, job_id: str) -> bool:
    """queued -> cancelled: a job no worker has started ends at once."""
    return _move(s, job_id, (JobStatus.QUEUED,), status=JobStatus.CANCELLED, finished_at=utcnow())


def request_cancel(s: Session, job_id: str) -> bool:
    """Ask a running job to stop after its current batch (it then ends ``cancelled``)."""
    return _move(s, job_id, (JobStatus.RUNNING,), cancel_requested=True)


def cancelled(s: Session, job_id: str, attempt: int | None = None) -> bool:
    """running -> cancelled: the worker stopped a job whose cancel was requested."""
    return _move(
        s,
        job_id,
        (JobStatus.RUNNING,),
        Job.cancel_requested.is_(True),
        attempt=attempt,
        status=JobStatus.CANCELLED,
        finished_at=utcnow(),
    )


def bulk_update() -> Any:
    """An UPDATE of jobs by primary key, for ``session.execute(stmt, [{"id": ..., ...}])``."""
    return update(Job)


def stored_counts(s: Session, job_id: str) -> tuple[int, int]:
    """(stored slices, stored slices with an error) of a job."""
    q = select(func.count(), func.count(SlicePrediction.error)).where(
        SlicePrediction.job_id == job_id
    )
    done, failed = s.execute(q).one()
    return int(done), int(failed)


@dataclass(frozen=True)
class Waiting:
    """A job the sweeper may queue again: what it needs to publish it."""

    job_id: str
    kind: str
    model_name: str


def stale_running(s: Session, stale_before: datetime) -> list[Waiting]:
    """Running jobs whose last heartbeat is older than ``stale_before``."""
    q = select(Job.id, Job.kind, Job.model_name).where(
        Job.status == JobStatus.RUNNING,
        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
    )
    return [Waiting(*row) for row in s.execute(q)]


def touch_queued(s: Session, job_ids: list[str]) -> None:
    """Mark queued jobs as just queued again (the sweeper republishes each at most once
    per ``STALE_AFTER_S``)."""
    if job_ids:
        s.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def waiting_since(s: Session, before: datetime) -> list[Waiting]:
    """Jobs queued (and unchanged) since before ``before``, oldest first."""
    q = (
        select(Job.id, Job.kind, Job.model_name)
        .where(Job.status == JobStatus.QUEUED, Job.updated_at < before)
        .order_by(Job.created_at)
    )
    return [Waiting(*row) for row in s.execute(q)]
