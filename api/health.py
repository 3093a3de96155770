"""Liveness and readiness probes for orchestrators and load balancers."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from redis import Redis
from sqlalchemy import text

from api.queue import workers_consuming
from config import get_settings
from db.session import get_engine

bp = APIBlueprint("health", __name__, tag="Health")


@bp.get("/healthz")
@bp.doc(summary="The API process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(fn: Any) -> tuple[bool, str]:
    try:
        return True, fn() or "ok"
    except Exception as exc:  # any failure means "not ready", reported, never raised
        return False, f"{type(exc).__name__}: {exc}"


def _database() -> str:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


def _broker() -> str:
    with Redis.from_url(get_settings().redis_url, socket_timeout=2) as client:
        client.ping()
    return "ok"


def _workers() -> str:
    names = workers_consuming()
    if not names:
        raise RuntimeError(f"no worker consumes the queue {get_settings().celery_queue!r}")
    return ", ".join(names)


@bp.get("/readyz")
@bp.doc(
    summary="Database and broker reachable, at least one worker answering", responses=[200, 503]
)
def readyz() -> tuple[dict[str, Any], int]:
    checks = {"database": _check(_database), "broker": _check(_broker)}
    checks["workers"] = _check(_workers) if checks["broker"][0] else (False, "broker down")
    ready = all(ok for ok, _ in checks.values())
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {k: v for k, (_, v) in checks.items()},
    }
    return body, 200 if ready else 503
