"""Counters every process that ends jobs shares (the API's cancel, the workers).

Apart from config/metrics.py on purpose: that module is imported before
``PROMETHEUS_MULTIPROC_DIR`` is set, and prometheus_client must not be
imported until then. This one is imported only by code that ends jobs.
"""

from __future__ import annotations

from prometheus_client import Counter

JOBS_ENDED = Counter("lungct_jobs_ended_total", "Jobs that ended, by outcome", ["outcome"])
