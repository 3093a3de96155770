"""Prometheus metrics of the workers, summed over every pool process of a worker.

* ``lungct_worker_batch_size``: slices per forward pass (histogram);
* ``lungct_worker_inference_seconds``: time per batch in the model (histogram);
* ``lungct_worker_slices_total{outcome}``: slices predicted / failed to decode
  (``rate()`` of it is slices per second);
* ``lungct_worker_jobs_handed_back_total``: jobs handed back by a stopping worker
  (jobs that ended: ``lungct_jobs_ended_total{outcome}``, config/counters.py);
* ``lungct_worker_model_load_seconds{model}``: how long loading each model took.

Each worker's main process serves them on ``WORKER_METRICS_HOST:WORKER_METRICS_PORT``
(127.0.0.1:9101; 0 disables; a port in use is logged and skipped). The pool
processes write to the shared multiprocess folder (config/metrics.py).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from config import Settings
from config.metrics import registry

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "lungct_worker_batch_size",
    "Slices per forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_SECONDS = Histogram(
    "lungct_worker_inference_seconds",
    "Model time per batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SLICES = Counter("lungct_worker_slices_total", "Slices processed", ["outcome"])
HANDED_BACK = Counter(
    "lungct_worker_jobs_handed_back_total", "Jobs handed back by a stopping worker"
)
MODEL_LOAD_SECONDS = Gauge(
    "lungct_worker_model_load_seconds",
    "Seconds the last load of each model took",
    ["model"],
    multiprocess_mode="max",
)


def observe_batch(size: int, failed: int, seconds: float) -> None:
    """One forward pass over ``size`` slices, ``failed`` of which could not be decoded."""
    BATCH_SIZE.observe(size - failed)
    INFERENCE_SECONDS.observe(seconds)
    SLICES.labels("predicted").inc(size - failed)
    if failed:
        SLICES.labels("failed").inc(failed)


def serve(settings: Settings) -> None:
    """Expose the worker's metrics over HTTP from its main process (if configured)."""
    if not settings.worker_metrics_port:
        return
    try:
        start_http_server(
            settings.worker_metrics_port, settings.worker_metrics_host, registry=registry()
        )
    except OSError as exc:
        log.warning(
            "worker metrics not served on %s:%s: %s",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            exc,
        )
        return
    log.info(
        "worker metrics on http://%s:%s/metrics",
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )
