"""Prometheus metrics of the API: ``GET /metrics`` (admin API key).

* ``lungct_api_request_seconds{method,endpoint,status}``: request latency
  histogram, by Flask endpoint (not URL, so job IDs do not explode the series);
* ``lungct_jobs{status}``: jobs in the database by status, counted at scrape time;
* ``lungct_queue_depth{kind}``: studies waiting in the broker queue, single images
  waiting in their models' lists (config/image_queue.py);
* gunicorn's processes are summed (multiprocess mode, config/metrics.py).

The route needs an admin key like the audit log: counts and endpoints are
operator information. Prometheus sends it with ``authorization:`` in its
scrape config (README, "Metrics").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

from apiflask import APIBlueprint, abort
from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from api import context
from api.auth import auth, caller
from config import Settings, image_queue
from config.metrics import registry
from config.notices import redis_client
from db.models import Job, JobStatus
from db.session import session_scope
from models.registry import Registry

bp = APIBlueprint("metrics", __name__, enable_openapi=False)

REQUEST_SECONDS = Histogram(
    "lungct_api_request_seconds",
    "API request latency",
    ["method", "endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class StateCollector(Collector):
    """Jobs by status and the queue depth, read when Prometheus scrapes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("lungct_jobs", "Jobs in the database by status", labels=["status"])
        with session_scope(self.settings.database_url) as s:
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        depth = GaugeMetricFamily(
            "lungct_queue_depth",
            "Jobs waiting in Redis: study messages and single images",
            labels=["kind"],
        )
        # redis-py types every reply as "value or Awaitable" (one class serves sync and
        # async); this client is the synchronous one.
        studies = cast(int, redis_client(self.settings).llen(self.settings.celery_queue))
        models = [c.name for c in Registry(self.settings.models_dirs).cards()]
        depth.add_metric(["study"], studies)
        depth.add_metric(["image"], image_queue.length(self.settings, models))
        yield depth


def init_app(app: Flask) -> None:
    """Time every request."""
    app.before_request(_start_timer)
    app.after_request(_observe)


def _start_timer() -> None:
    g.lungct_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("lungct_started", None)
    if started is not None:
        endpoint = request.endpoint or "unmatched"
        REQUEST_SECONDS.labels(request.method, endpoint, str(response.status_code)).observe(
            time.perf_counter() - started
        )
    return response


@bp.get("/metrics")
@bp.auth_required(auth)
def metrics() -> Response:
    """Prometheus text format: request latency, jobs by status, queue depth."""
    if not caller().admin:
        abort(403, "metrics need an admin API key (python -m api.keys create NAME --admin)")
    reg = registry()
    body = generate_latest(reg) + generate_latest(_state_registry(context.settings()))
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def _state_registry(settings: Settings) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(StateCollector(settings))
    return reg
