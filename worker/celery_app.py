"""The worker's Celery application (``celery -A worker.celery_app``).

Process-level behaviour (model warm-up in each pool child, graceful stop, the
sweeper thread, recovery of jobs whose pool child died) is wired up by the
signal handlers in :mod:`worker.signals`.
"""

from __future__ import annotations

from celery import Celery

from config import get_settings
from config.celery import celery_config

celery = Celery("lungct", include=["worker.tasks"])
celery.conf.update(celery_config(get_settings()))

import worker.signals  # noqa: E402,F401  (registers the signal handlers)
