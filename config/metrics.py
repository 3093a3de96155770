"""Prometheus multiprocess set-up shared by the API (gunicorn) and the workers (prefork).

Both run several processes, and a scrape must see all of them, so
prometheus_client's multiprocess mode is used: each process writes its
samples to files in ``PROMETHEUS_MULTIPROC_DIR``, and the exporter sums them.
The variable must be set before prometheus_client is first imported, so the
entry points (``api/gunicorn_conf.py``, ``worker/__main__.py``) call
:func:`prepare_multiprocess_dir` first thing. Without it (tests, a plain
``flask run``) metrics live in the process's default registry.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # prometheus_client is imported only after the folder is set
    from prometheus_client import CollectorRegistry

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(prefix: str) -> str:
    """Use ``$PROMETHEUS_MULTIPROC_DIR`` if set, else a fresh private folder; return it."""
    folder = os.environ.get(ENV, "").strip()
    if not folder:
        folder = tempfile.mkdtemp(prefix=f"lungct-metrics-{prefix}-")
        os.environ[ENV] = folder
    os.makedirs(folder, exist_ok=True)
    return folder


def registry() -> CollectorRegistry:
    """The registry to expose: every process's samples in multiprocess mode, else this one's."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get(ENV):
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (its counters and histograms are kept)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
