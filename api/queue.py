"""Enqueue jobs by task name, without importing worker code (and so TensorFlow)."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from config import get_settings
from config.celery import RUN_JOB_TASK, celery_config


@lru_cache(maxsize=1)
def producer() -> Celery:
    """A producer-only Celery app with the workers' configuration."""
    app = Celery("lungct-api")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_job(job_id: str) -> None:
    """Send only the job ID; the worker loads everything else from the database."""
    producer().send_task(RUN_JOB_TASK, args=[job_id], retry=True, retry_policy={"max_retries": 2})


def workers_consuming(timeout_s: float = 1.0) -> list[str]:
    """Names of the workers that answered and consume our queue (for /readyz)."""
    queue = get_settings().celery_queue
    replies = producer().control.inspect(timeout=timeout_s).active_queues() or {}
    return sorted(
        name for name, queues in replies.items() if any(q["name"] == queue for q in queues)
    )
