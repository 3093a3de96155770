"""Flower, with its Prometheus ``/metrics`` behind the same basic auth as its pages.

``python -m worker.flower [flower options]`` is ``celery -A worker.celery_app
flower [options]`` except for one thing: Flower serves ``/metrics`` to anyone,
even with ``--basic_auth``, and its counters name task IDs and worker hosts.
Here that handler requires the configured credentials like every page
(``tornado.web.authenticated`` runs Flower's own basic-auth check). The
``/healthcheck`` route stays open for container health checks.
"""

from __future__ import annotations

import sys

from flower.views import monitor
from tornado import web


def protect_metrics() -> None:
    """Make Flower's /metrics handler require authentication."""
    monitor.Metrics.get = web.authenticated(monitor.Metrics.get)


def main(argv: list[str] | None = None) -> None:
    protect_metrics()
    from worker.celery_app import celery

    celery.start(["flower", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
