"""The end of a job, written once: commit the terminal move, free the upload, count, notify.

Whoever ends jobs (the worker's batch runner, the API's cancel, the API when
the queue refused a job) calls :func:`close`; whoever removes jobs (the API's
delete, the sweeper's retention) calls :func:`remove`. So the side effects of
an end are the same on every path, and happen only for jobs that really moved
(the status change is a conditional UPDATE, db/lifecycle.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from config import Settings
from config.counters import JOBS_ENDED
from config.notices import announce_ended
from db import lifecycle
from db.models import Job, JobStatus
from db.session import session_scope
from storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class End:
    """How one job ends, and from which statuses it may (a conditional move)."""

    status: JobStatus
    allowed: tuple[JobStatus, ...] = (JobStatus.RUNNING,)
    summary: dict[str, Any] | None = None
    error: str | None = None
    attempt: int | None = None  # a worker's end: only while the job is at its attempt
    progress: dict[str, Any] = field(default_factory=dict)


def succeeded(summary: dict[str, Any], attempt: int | None = None, **progress: Any) -> End:
    """A worker's job that produced its verdict."""
    return End(JobStatus.SUCCEEDED, summary=summary, attempt=attempt, progress=progress)


def failed(
    error: str,
    allowed: tuple[JobStatus, ...] = (JobStatus.RUNNING,),
    attempt: int | None = None,
    **progress: Any,
) -> End:
    """A job that failed; the API's enqueue failure passes ``allowed=(QUEUED,)``."""
    return End(JobStatus.FAILED, allowed, error=error, attempt=attempt, progress=progress)


def cancelled(allowed: tuple[JobStatus, ...] = (JobStatus.RUNNING,)) -> End:
    """A queued job cancelled by the API, or a running one stopped by its worker."""
    return End(JobStatus.CANCELLED, allowed)


def close(settings: Settings, storage: Storage, ends: Mapping[str, End]) -> list[str]:
    """End these jobs in one transaction; then release, count and announce those that moved.

    Returns the IDs that moved (a job already ended, or no longer in an allowed
    status, is left as it is and gets no side effect).
    """
    if not ends:
        return []
    with session_scope(settings.database_url) as s:
        moved = [job_id for job_id, end in ends.items() if _move(s, job_id, end)]
    for job_id in moved:
        storage.release(job_id)
        JOBS_ENDED.labels(str(ends[job_id].status)).inc()
    announce_ended(settings, moved)
    return moved


def _move(s: Session, job_id: str, end: End) -> bool:
    if end.status == JobStatus.SUCCEEDED:
        return lifecycle.succeed(s, job_id, end.summary or {}, attempt=end.attempt, **end.progress)
    if end.status == JobStatus.FAILED:
        message = end.error or "failed"
        return lifecycle.fail(
            s, job_id, message, allowed=end.allowed, attempt=end.attempt, **end.progress
        )
    if end.allowed == (JobStatus.QUEUED,):
        return lifecycle.cancel_queued(s, job_id)
    return lifecycle.cancelled(s, job_id, attempt=end.attempt)


def remove(settings: Settings, storage: Storage, job_ids: Iterable[str]) -> None:
    """Delete jobs with their results, then every file stored for them (uploads, images)."""
    ids = list(job_ids)
    if not ids:
        return
    with session_scope(settings.database_url) as s:
        s.execute(delete(Job).where(Job.id.in_(ids)))
    for job_id in ids:
        storage.discard(job_id)
