"""Celery tasks: thin wrappers that receive a job ID and call plain functions."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from config.celery import RUN_JOB_TASK
from worker.pipeline import mark_failed, run_job

log = logging.getLogger(__name__)


@shared_task(name=RUN_JOB_TASK, bind=True, max_retries=5, acks_late=True)
def run_job_task(self: Task, job_id: str) -> None:
    """Process one job. Only its ID travels through the broker, never data."""
    try:
        run_job(job_id)
    except OperationalError as exc:  # database briefly unreachable: try again later
        if self.request.retries < self.max_retries:
            log.warning("job %s: database error, retrying: %s", job_id, exc)
            raise self.retry(exc=exc, countdown=min(2**self.request.retries, 30)) from exc
        _fail_safely(job_id, "the database was unreachable; please resubmit")
    except SoftTimeLimitExceeded:
        _fail_safely(job_id, "the job exceeded its time limit (JOB_TIME_LIMIT_S)")
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _fail_safely(
            job_id, f"internal error ({type(exc).__name__}); the operators have the details"
        )


def _fail_safely(job_id: str, message: str) -> None:
    """Record the failure; if even that fails, log it rather than crash the worker."""
    try:
        mark_failed(job_id, message)
    except Exception:
        log.exception("job %s: could not record the failure %r", job_id, message)
