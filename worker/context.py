"""What the worker's code needs, built once per process from the settings.

The worker's entry points (the Celery task, the single-image claimer, the
signal handlers) are the only places that read the settings; everything they
call gets them in a :class:`worker.runner.Context`.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from config import get_settings, image_queue
from config.celery import publish_job
from db.models import JobKind
from storage import open_storage
from worker.inference import Predictor, predictor_for
from worker.runner import Context


@cache
def worker_context(app: Celery) -> Context:
    """The process's context: its settings, storage, model cache and how to requeue."""
    settings = get_settings()

    def republish(job_id: str, kind: str, model_name: str) -> None:
        """Queue a job again the way it was queued first: list entry or Celery message."""
        if kind == JobKind.IMAGE:
            image_queue.push(settings, [job_id], model_name)
        else:
            publish_job(app, job_id)

    def predictor(name: str) -> Predictor:
        return predictor_for(name, settings)

    return Context(settings, open_storage(settings), predictor, republish)
