"""Celery tasks: thin wrappers that receive a job ID and call plain functions."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from config.celery import RUN_JOB_TASK, publish_job
from worker.pipeline import JobFailed, end_failed, run_job

log = logging.getLogger(__name__)


@shared_task(name=RUN_JOB_TASK, bind=True, acks_late=True, throws=(JobFailed,))
def run_job_task(self: Task, job_id: str) -> str:
    """Process one job. Only its ID travels through the broker, never data.

    A job that ends ``failed`` raises :class:`JobFailed`, so Flower shows the
    task as FAILURE with the job's message (``throws``: logged without a
    traceback; the message is acknowledged all the same).
    """
    try:
        run_job(job_id, publish=lambda other: publish_job(self.app, other))
    except JobFailed:
        raise
    except OperationalError as exc:
        # Database unreachable: leave the job running; its heartbeat goes stale
        # and the sweeper requeues it once the database answers again.
        log.warning("job %s: database error, the sweeper will requeue it: %s", job_id, exc)
    except SoftTimeLimitExceeded:
        _fail_safely(job_id, "the job exceeded its time limit (JOB_TIME_LIMIT_S)")
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _fail_safely(
            job_id, f"internal error ({type(exc).__name__}); the operators have the details"
        )
    return job_id


def _fail_safely(job_id: str, message: str) -> None:
    """Record the failure and raise JobFailed; if recording fails, log it, never crash."""
    try:
        end_failed(job_id, message)
    except JobFailed:
        raise
    except Exception:
        log.exception("job %s: could not record the failure %r", job_id, message)
