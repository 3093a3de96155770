"""Queue jobs without importing worker code (and so TensorFlow).

A study gets a Celery message (``lungct.run_job``, its ID as the task ID); a
single image gets an entry in its model's Redis list, which workers take in
micro-batches (config/image_queue.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial

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


def queue_jobs(settings: Settings, jobs: Sequence[tuple[str, str, str]]) -> tuple[list[str], str]:
    """Queue just-committed jobs (ID, kind, model): one list push per model for the
    single images, one Celery message per study.

    Returns the IDs that were not queued and why ("" when every one was). After
    the first failure nothing more is tried: Redis is down or hung, and each
    try would cost the request another BROKER_TIMEOUT_S.
    """
    images: dict[str, list[str]] = {}
    for job_id, kind, model_name in jobs:
        if kind == JobKind.IMAGE:
            images.setdefault(model_name, []).append(job_id)
    studies = [job_id for job_id, kind, _ in jobs if kind != JobKind.IMAGE]
    sends = [partial(image_queue.push, settings, ids, m) for m, ids in images.items()]
    sends += [partial(enqueue_job, settings, job_id) for job_id in studies]
    groups = list(images.values()) + [[job_id] for job_id in studies]
    for n, send in enumerate(sends):
        try:
            send()
        except Exception as exc:  # broker down or hung: the caller fails these jobs
            return [job_id for group in groups[n:] for job_id in group], type(exc).__name__
    return [], ""


def workers_consuming(settings: Settings, timeout_s: float = 1.0) -> list[str]:
    """Names of the workers that answered and consume our queue (for /readyz)."""
    replies = producer(settings).control.inspect(timeout=timeout_s).active_queues() or {}
    return sorted(
        name
        for name, queues in replies.items()
        if any(q["name"] == settings.celery_queue for q in queues)
    )
