"""Queue jobs without importing worker code (and so TensorFlow).

A study gets a Celery message (``lungct.run_job``, its ID as the task ID); a
single image gets an entry in its model's Redis list, which workers take in
micro-batches (config/image_queue.py).
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from config import Settings, image_queue
from config.celery import celery_config, publish_job
from db.models import JobKind


@lru_cache(maxsize=8)
def producer(settings: Settings) -> Celery:
    """A producer-only Celery app with the workers' configuration (short socket timeouts)."""
    app = Celery("lungct-api")
    app.conf.update(celery_config(settings, producer=True))
    return app


def enqueue_job(settings: Settings, job_id: str) -> None:
    """Send a job's Celery message (only its ID); raises when the broker does not answer."""
    publish_job(producer(settings), job_id)


def queue_job(settings: Settings, job_id: str, kind: str, model_name: str) -> None:
    """Queue a just-committed job; raises when Redis does not answer within a few seconds."""
    if kind == JobKind.IMAGE:
        image_queue.push(settings, [job_id], model_name)
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
