"""Job-ended notices over Redis pub/sub, so a waiting poll answers the moment its job ends.

``GET /api/v1/jobs/<id>?wait=S`` (api/jobs.py) holds the request until the job
has ended or ``S`` seconds have passed. Polling every few milliseconds instead
costs a request, a key lookup and a query per poll and still adds half an
interval of delay; a waiting request costs one Redis subscription and nothing
while it waits.

Notices are a shortcut, never the source of truth: whoever ends a job (the
worker, the API's cancel) announces it after the commit, best effort; a waiter
subscribes first, then reads the database, and reads it again on every notice
and every :data:`RECHECK_S`, so a notice lost to a Redis hiccup (or a path that
does not announce) costs at most that much delay, and a notice sent between
the subscribe and the first read is not missed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import TypeVar

from redis import Redis, RedisError
from redis.client import PubSub

from config.settings import Settings

log = logging.getLogger(__name__)
RECHECK_S = 1.0
T = TypeVar("T")


@lru_cache(maxsize=8)
def redis_client(settings: Settings) -> Redis:
    """A Redis client with the same short timeouts as publishing (locks, readiness, notices)."""
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.broker_timeout_s,
        socket_connect_timeout=settings.broker_timeout_s,
    )


def channel(settings: Settings, job_id: str) -> str:
    """The job's pub/sub channel (per queue, so test and bench services never cross)."""
    return f"lungct:ended:{settings.celery_queue}:{job_id}"


def announce_ended(settings: Settings, job_ids: Iterable[str]) -> None:
    """Tell waiting polls that these jobs have ended (call after the commit; never raises)."""
    ids = list(job_ids)
    if not ids:
        return
    try:
        pipe = redis_client(settings).pipeline(transaction=False)
        for job_id in ids:
            pipe.publish(channel(settings, job_id), "ended")
        pipe.execute()
    except RedisError as exc:  # waiters re-read the database every RECHECK_S anyway
        log.debug("job-ended notice not sent: %s", type(exc).__name__)


def wait_until(
    settings: Settings, job_ids: Sequence[str], check: Callable[[], T | None], timeout_s: float
) -> T | None:
    """Block until ``check()`` gives an answer (not None) or ``timeout_s`` has passed.

    ``check`` reads the database and answers once the jobs it watches have
    ended (one of ``job_ids``, or all: its choice); it runs once after
    subscribing to their notices, after every notice and at least every
    :data:`RECHECK_S`. Returns its answer, or None after ``timeout_s``.
    Without Redis it falls back to checking every :data:`RECHECK_S`.
    """
    deadline = time.monotonic() + timeout_s
    pubsub = redis_client(settings).pubsub()
    try:
        channels = {channel(settings, job_id) for job_id in job_ids}
        pubsub.subscribe(*channels)
        _confirmed(pubsub, len(channels), min(timeout_s, settings.broker_timeout_s))
        return _until(check, deadline, lambda s: pubsub.get_message(timeout=s))
    except RedisError as exc:
        log.debug("job-ended notices unavailable: %s", type(exc).__name__)
        return _until(check, deadline, time.sleep)
    finally:
        try:
            pubsub.close()
        except RedisError:
            log.debug("pubsub close failed")


def _confirmed(pubsub: PubSub, channels: int, timeout_s: float) -> None:
    """Wait until Redis has confirmed every subscription, so no notice after it is missed."""
    deadline = time.monotonic() + timeout_s
    while channels and (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message is not None and message["type"] == "subscribe":
            channels -= 1


def _until(
    check: Callable[[], T | None], deadline: float, pause: Callable[[float], object]
) -> T | None:
    """``check()`` until it answers or ``deadline`` passes, pausing up to RECHECK_S between
    (``pause`` returns early on a notice, or is a plain sleep without Redis)."""
    while (answer := check()) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        pause(min(left, RECHECK_S))
    return answer
