"""Celery tasks: thin wrappers that receive a job ID and call plain functions.

Studies arrive as ``lungct.run_job`` tasks (the task ID is the job ID, so
Flower finds a study by its ID); single images are taken from Redis lists by
worker/claimer.py and have no task of their own. The task's final state tells
the job's end: SUCCESS for ``succeeded``, FAILURE with :class:`JobFailed` for
``failed`` and with :class:`JobCancelled` for ``cancelled``.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from config.celery import RUN_JOB_TASK
from db import lifecycle
from db.models import Job, JobStatus
from db.session import session_scope
from worker import runner
from worker.context import worker_context

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job ended ``failed``: Celery (and Flower) record the task as FAILURE."""


class JobCancelled(Exception):
    """The job ended ``cancelled``: its task is a FAILURE too, never a SUCCESS."""


@shared_task(name=RUN_JOB_TASK, bind=True, acks_late=True, throws=(JobFailed, JobCancelled))
def run_job_task(self: Task, job_id: str) -> str:
    """Process one job. Only its ID travels through the broker, never data.

    ``throws``: a failed or cancelled job is logged without a traceback; its
    message is acknowledged all the same.
    """
    ctx = worker_context(self.app)
    try:
        run_job(job_id, ctx)
    except (JobFailed, JobCancelled):
        raise
    except OperationalError as exc:
        # Database unreachable: leave the job running; its heartbeat goes stale
        # and the sweeper requeues it once the database answers again.
        log.warning("job %s: database error, the sweeper will requeue it: %s", job_id, exc)
    except SoftTimeLimitExceeded:
        _fail_safely(ctx, job_id, "the job exceeded its time limit (JOB_TIME_LIMIT_S)")
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _fail_safely(
            ctx, job_id, f"internal error ({type(exc).__name__}); the operators have the details"
        )
    return job_id


def run_job(job_id: str, ctx: runner.Context) -> None:
    """Start job ``job_id`` and run it to its end; raise if it failed or was cancelled.

    A delivery of a job that is unknown, live elsewhere or already ended starts
    nothing (a duplicate message, or one the sweeper published again) and
    reports the job's end as it stands.
    """
    settings = ctx.settings
    with session_scope(settings.database_url) as s:
        started = lifecycle.start(s, job_id, settings.stale_after_s)
    if started is None:
        log.info("job %s: nothing to do", job_id)
        _report(job_id, ctx)
        return
    if started.attempts > settings.max_attempts:  # started again and again without finishing
        message = (
            f"started {settings.max_attempts} times without finishing "
            "(worker crashes or database outages)"
        )
        runner.fail(ctx, started, message)
        raise JobFailed(message)
    outcome = runner.run([started], ctx)[job_id]
    if outcome in (JobStatus.FAILED, JobStatus.CANCELLED):
        _report(job_id, ctx)


def _report(job_id: str, ctx: runner.Context) -> None:
    """Raise what the job's end is to Celery (nothing for succeeded, running or unknown)."""
    with session_scope(ctx.settings.database_url) as s:
        row = s.execute(select(Job.status, Job.error).where(Job.id == job_id)).one_or_none()
    if row is not None and row.status == JobStatus.FAILED:
        raise JobFailed(row.error or "failed")
    if row is not None and row.status == JobStatus.CANCELLED:
        raise JobCancelled("the job was cancelled")


def _fail_safely(ctx: runner.Context, job_id: str, message: str) -> None:
    """Record the failure of this worker's running job and raise JobFailed; never crash."""
    try:
        moved = runner.fail_running(ctx, job_id, message)
    except Exception:
        log.exception("job %s: could not record the failure %r", job_id, message)
        return
    if moved:
        raise JobFailed(message)
