"""Enqueue jobs by task name, without importing worker code (and so TensorFlow)."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from config import Settings
from config.celery import celery_config, publish_job
from config.doorbell import ring, rings
from db.models import JobKind


@lru_cache(maxsize=8)
def producer(settings: Settings) -> Celery:
    """A producer-only Celery app with the workers' configuration (short socket timeouts)."""
    app = Celery("lungct-api")
    app.conf.update(celery_config(settings, producer=True))
    return app


def enqueue_job(settings: Settings, job_id: str) -> None:
    """Send only the job ID; raises when the broker does not answer within a few seconds."""
    publish_job(producer(settings), job_id)


def queue_job(settings: Settings, job_id: str, kind: str, model_name: str) -> None:
    """Queue a just-committed job: a study always publishes; a single image rings.

    A single image skips its message when one that will claim it is pending
    (config/doorbell.py). Raises when the broker does not answer.
    """
    if kind == JobKind.IMAGE and rings(settings):
        ring(settings, job_id, model_name, lambda j: enqueue_job(settings, j))
    else:
        enqueue_job(settings, job_id)


def workers_consuming(settings: Settings, timeout_s: float = 1.0) -> list[str]:
    """Names of the workers that answered and consume our queue (for /readyz)."""
    replies = producer(settings).control.inspect(timeout=timeout_s).active_queues() or {}
    return sorted(
        name
        for name, queues in replies.items()
        if any(q["name"] == settings.celery_queue for q in queues)
    )
