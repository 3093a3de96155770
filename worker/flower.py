"""Flower, with its Prometheus ``/metrics`` behind the same basic auth as its pages.

``python -m worker.flower [flower options]`` is ``celery -A worker.celery_app
flower [options]`` except for two things:

- Flower serves ``/metrics`` to anyone, even with ``--basic_auth``, and its
  counters name task IDs and worker hosts. Here that handler requires the
  configured credentials like every page (``tornado.web.authenticated`` runs
  Flower's own basic-auth check). ``/healthcheck`` stays open for container
  health checks.
- Flower without credentials serves every page, task arguments and
  ``/metrics`` included, to whoever reaches its port, and says nothing. Here
  it refuses to start without ``FLOWER_BASIC_AUTH`` (or ``--basic_auth``, or
  Flower's OAuth ``--auth``), unless ``ALLOW_UNAUTHENTICATED_FLOWER=1`` says
  so; then it only listens on the loopback interface (127.0.0.1 unless
  ``--address`` names another loopback address) and logs a warning.
  ``make run`` generates a password and passes it, so it is unaffected.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from flower.views import monitor
from tornado import web

from config import Settings, get_settings

log = logging.getLogger(__name__)
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
NO_CREDENTIALS = (
    "refusing to start Flower without credentials: its pages show every task and worker. "
    "Set FLOWER_BASIC_AUTH=user:password (or pass --basic_auth=user:password); "
    "ALLOW_UNAUTHENTICATED_FLOWER=1 starts it without them, on 127.0.0.1 only "
    "(docs/hardening.md)"
)


def protect_metrics() -> None:
    """Make Flower's /metrics handler require authentication."""
    monitor.Metrics.get = web.authenticated(monitor.Metrics.get)


def option(argv: Sequence[str], name: str) -> str | None:
    """The value of Flower option ``--name`` (``--name=value`` or ``--name value``)."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in spellings:
            if eq:
                return value
            return argv[i + 1] if i + 1 < len(argv) else ""
    return None


def checked_argv(
    argv: Sequence[str], settings: Settings, environ: Mapping[str, str] = os.environ
) -> list[str]:
    """``argv`` to start Flower with, or SystemExit when it would be open to anyone."""
    credentials = (
        option(argv, "basic_auth")
        or settings.flower_basic_auth
        or option(argv, "auth")
        or environ.get("FLOWER_AUTH", "")
    )
    if credentials:
        return list(argv)
    if not settings.allow_unauthenticated_flower:
        raise SystemExit(f"worker.flower: {NO_CREDENTIALS}")
    address = option(argv, "address") or environ.get("FLOWER_ADDRESS", "")
    if address and address not in LOOPBACK:
        raise SystemExit(
            f"worker.flower: without credentials Flower only listens on the loopback "
            f"interface, not on {address!r} (set FLOWER_BASIC_AUTH to serve other hosts)"
        )
    log.warning("Flower runs WITHOUT credentials (ALLOW_UNAUTHENTICATED_FLOWER), loopback only")
    return list(argv) if address else [*argv, "--address=127.0.0.1"]


def main(argv: list[str] | None = None) -> None:
    args = checked_argv(sys.argv[1:] if argv is None else argv, get_settings())
    protect_metrics()
    from worker.celery_app import celery

    celery.start(["flower", *args])


if __name__ == "__main__":
    main()
