"""Which worker processes have loaded their default model: ``/readyz`` waits for one.

Celery reports a worker as consuming the queue as soon as its main process
starts, while its pool process still imports TensorFlow, loads the model and
times batch sizes (several seconds on a CPU). A job sent then waits for all of
that, so "ready" would be a promise the first job does not get. Each pool
process therefore records itself here once it is warm (worker/signals.py) and
again every :data:`REFRESH_S` while it lives (worker/claimer.py), in a sorted set
per queue scored by time; entries older than :data:`TTL_S` (a process killed
without saying goodbye) no longer count.
"""

from __future__ import annotations

import os
import socket
import time
from typing import cast

from config.notices import redis_client
from config.settings import Settings

TTL_S = 60.0
REFRESH_S = 15.0


def warm_key(settings: Settings) -> str:
    """The queue's set of warm pool processes (per queue, like every key of ours)."""
    return f"lungct:warm:{settings.celery_queue}"


def this_process() -> str:
    """How a pool process names itself in the set: host and process ID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_warm(settings: Settings, member: str, now: float | None = None) -> None:
    """Record ``member`` as warm now, and drop entries that have expired (raises RedisError)."""
    now = time.time() if now is None else now
    pipe = redis_client(settings).pipeline(transaction=False)
    pipe.zadd(warm_key(settings), {member: now})
    pipe.zremrangebyscore(warm_key(settings), "-inf", now - TTL_S)
    pipe.execute()


def forget(settings: Settings, member: str) -> None:
    """A pool process that exits removes itself (raises RedisError)."""
    redis_client(settings).zrem(warm_key(settings), member)


def warm_processes(settings: Settings, now: float | None = None) -> list[str]:
    """The pool processes that were warm within the last :data:`TTL_S` seconds."""
    now = time.time() if now is None else now
    raw = redis_client(settings).zrangebyscore(warm_key(settings), now - TTL_S, "+inf")
    return sorted(m.decode() for m in cast(list[bytes], raw))
