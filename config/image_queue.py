"""Single images wait in a Redis list per model; workers take them in micro-batches.

The invariant, in one sentence: every queued single-image job has an entry in
its model's list. The API pushes the job's ID after committing the job; a
worker blocks on the lists, pops up to ``MICROBATCH_MAX_JOBS`` IDs at once,
and starts those still queued with one conditional UPDATE (db/lifecycle.py
``start_images``), so an entry whose job was cancelled, deleted or already
started is simply dropped. Entries lost with Redis's data, or never pushed
because the API died between its commit and the push, are pushed again by
the sweeper (worker/sweeper.py) once the job has waited ``STALE_AFTER_S``.

A single image therefore costs one ``RPUSH``, not a Celery message, and the
worker's forward passes are shared across requests. Studies keep their
Celery message (one per job; Flower shows them as tasks).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

from config.notices import redis_client
from config.settings import Settings

GATHER_POLL_S = 0.002


def list_key(settings: Settings, model_name: str) -> str:
    """The model's list, per Celery queue so test and bench services never cross."""
    return f"lungct:images:{settings.celery_queue}:{model_name}"


def push(settings: Settings, job_ids: Sequence[str], model_name: str) -> None:
    """Append just-committed single-image jobs to their model's list (raises if Redis fails).

    redis-py types its replies as "value or awaitable" (one type for its sync
    and asyncio clients); this client is the sync one, hence the casts below.
    """
    if job_ids:
        redis_client(settings).rpush(list_key(settings, model_name), *job_ids)


def waiting(settings: Settings, model_name: str) -> set[str]:
    """The job IDs in the model's list now (for the sweeper)."""
    raw = cast(list[bytes], redis_client(settings).lrange(list_key(settings, model_name), 0, -1))
    return {r.decode() for r in raw}


def length(settings: Settings, model_names: Sequence[str]) -> int:
    """Entries waiting in these models' lists (for the queue-depth metric)."""
    client = redis_client(settings)
    return sum(cast(int, client.llen(list_key(settings, m))) for m in model_names)


def take(
    settings: Settings, model_names: Sequence[str], limit: int, block_s: float
) -> tuple[str, list[str]] | None:
    """Block up to ``block_s`` for a single image of any of these models; take up to ``limit``.

    Returns (model, job IDs) of one model, or None when nothing arrived. An
    image that comes alone goes at once; when more were waiting (a burst), it
    keeps gathering for at most ``MICROBATCH_WAIT_MS``, so a burst that is still
    arriving shares one forward pass.
    """
    client = redis_client(settings)
    models = {list_key(settings, m): m for m in model_names}
    first = cast(list[bytes] | None, client.blpop(list(models), timeout=block_s))
    if first is None:
        return None
    key = first[0].decode()
    ids = [first[1].decode()]
    deadline = time.monotonic() + settings.microbatch_wait_ms / 1000
    while len(ids) < limit:
        popped = cast(list[bytes] | None, client.lpop(key, limit - len(ids)))
        more = [m.decode() for m in popped or []]
        ids += more
        # alone, an image goes at once; during a burst, gather until the deadline
        if not more or time.monotonic() >= deadline:
            break
        time.sleep(GATHER_POLL_S)
    return models[key], ids
