"""The worker's Celery application (``celery -A worker.celery_app``).

Per-process resources: after each prefork child starts, it drops database
connections inherited from the parent and loads the default model once, so
the first job does not pay the model start-up.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from config import get_settings
from config.celery import celery_config
from db.session import dispose_after_fork

log = logging.getLogger(__name__)

celery = Celery("lungct", include=["worker.tasks"])
celery.conf.update(celery_config(get_settings()))


@worker_process_init.connect
def _init_child(**_kwargs: object) -> None:
    """Fork safety first (SQLAlchemy pooling docs), then warm the default model."""
    dispose_after_fork()
    from worker.inference import warm_up

    try:
        warm_up(get_settings().default_model)
    except Exception:  # a missing model must not stop the worker; jobs report it
        log.exception("could not preload the default model")
