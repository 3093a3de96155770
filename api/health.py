"""Liveness and readiness probes for orchestrators and load balancers.

``/readyz`` checks the database, the broker and that a worker consumes the
queue with at least one pool process that has loaded its model (config/warm.py:
a job sent earlier would wait for TensorFlow and the model to load); the answer
is cached for READYZ_CACHE_S seconds (the worker check alone takes a second), so
probes and dashboards cannot load the broker.
Anyone gets ``ok``/``failed`` per check; the error text (host names, driver
messages) is shown only to an operator, i.e. a request with an admin key.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from apiflask import APIBlueprint
from sqlalchemy import text

from api import context
from api.auth import bearer_token, find_key
from api.queue import workers_consuming
from config import Settings
from config.notices import redis_client
from config.warm import warm_processes
from db.session import get_engine

bp = APIBlueprint("health", __name__, tag="Health")
_cache: dict[Settings, tuple[float, dict[str, tuple[bool, str]]]] = {}
_cache_lock = threading.Lock()


@bp.get("/healthz")
@bp.doc(summary="The API process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(fn: Any, settings: Settings) -> tuple[bool, str]:
    try:
        return True, fn(settings) or "ok"
    except Exception as exc:  # any failure means "not ready", reported, never raised
        return False, f"{type(exc).__name__}: {exc}"


def _database(settings: Settings) -> str:
    with get_engine(settings.database_url).connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


def _broker(settings: Settings) -> str:
    redis_client(settings).ping()
    return "ok"


def _workers(settings: Settings) -> str:
    names = workers_consuming(settings)
    if not names:
        raise RuntimeError(f"no worker consumes the queue {settings.celery_queue!r}")
    processes = warm_processes(settings)
    if not processes:
        raise RuntimeError(f"{', '.join(names)} starting: no pool process has loaded its model")
    return f"{', '.join(names)} ({len(processes)} pool processes warm)"


def _checks(settings: Settings) -> dict[str, tuple[bool, str]]:
    """Run the checks, or reuse a result younger than READYZ_CACHE_S."""
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(settings)
        if cached is not None and now - cached[0] < settings.readyz_cache_s:
            return cached[1]
    checks = {"database": _check(_database, settings), "broker": _check(_broker, settings)}
    if checks["broker"][0]:
        checks["workers"] = _check(_workers, settings)
    else:
        checks["workers"] = (False, "broker down")
    with _cache_lock:
        _cache[settings] = (time.monotonic(), checks)
    return checks


def _is_operator() -> bool:
    """An admin API key in the Authorization header (optional on this route)."""
    token = bearer_token()
    if token is None:
        return False
    try:
        with context.session() as s:
            row = find_key(s, token)
            return bool(row is not None and row.admin)
    except Exception:  # database down: the caller is nobody in particular
        return False


@bp.get("/readyz")
@bp.doc(
    summary="Database and broker reachable, a worker consuming the queue with its model loaded",
    description="Details of each check only with an admin API key.",
    responses=[200, 503],
)
def readyz() -> tuple[dict[str, Any], int]:
    checks = _checks(context.settings())
    ready = all(ok for ok, _ in checks.values())
    detail = _is_operator()
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {
            k: (v if detail else ("ok" if ok else "failed")) for k, (ok, v) in checks.items()
        },
    }
    return body, 200 if ready else 503
