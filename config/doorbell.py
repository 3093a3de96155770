"""One broker message per burst of single images, not one per image (the doorbell).

With cross-request micro-batching (worker/microbatch.py) a worker that starts
a single-image job claims every other queued single image of the same model
from the database. Their own broker messages then only cost: the API's publish,
and in the worker a delivery, a pool round trip, task events and a read that
finds the job already ended. On a burst those were most of the per-image cost.

So the API publishes a single image's message only when no message that will
claim it is pending. Per queue and model there is one Redis key, the doorbell:

* the API, after committing the job, sets the key if it is absent
  (``SET NX``) and publishes only then: it rang. When the key is already set,
  a message published earlier has not reached its claim yet, and will take
  this job (the job is committed before the ``SET``);
* a worker deletes the key right before each claim (:func:`answer`), so the
  next submit after the claim rings again;
* a claim that filled a whole micro-batch, or failed, rings again itself (the
  rest may have no message of their own), and a delivery whose own job was
  already taken rings for the oldest waiting image (worker/microbatch.py
  ``pass_on``).

The key expires at an absolute time :data:`DOORBELL_TTL_S` after the ring, as
a guard: expiry never strands a job, because the message that set the key
still arrives and claims, and a ``SET`` that a frozen Redis runs on resuming
lands already expired. A message lost with Redis's data, or a ringer that died
between the key and the publish, leaves jobs queued without a message; the
sweeper rings for those after ``STALE_AFTER_S``, once per model. Studies, and every job when
``MICROBATCH_MAX_JOBS`` is 1 or ``MICROBATCH_DOORBELL`` is false, always get
their own message (the API and the workers must agree on these two settings,
as on ``CELERY_QUEUE``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress

from redis import RedisError

from config.notices import redis_client
from config.settings import Settings

log = logging.getLogger(__name__)
DOORBELL_TTL_S = 2
"""Short: expiry only costs an extra message, and it bounds how long a key whose
ringer died before publishing can hold later submits back."""


def doorbell_key(settings: Settings, model_name: str) -> str:
    return f"lungct:doorbell:{settings.celery_queue}:{model_name}"


def batching(settings: Settings) -> bool:
    """Whether single images share forward passes: MICROBATCH_MAX_JOBS > 1."""
    return settings.microbatch_max_jobs > 1


def rings(settings: Settings) -> bool:
    """Whether the API rings instead of publishing every single image (MICROBATCH_DOORBELL)."""
    return batching(settings) and settings.microbatch_doorbell


def ring(settings: Settings, job_id: str, model_name: str, publish: Callable[[str], None]) -> bool:
    """Publish queued single image ``job_id`` unless a pending message will claim it.

    Returns whether it published. Raises what the broker raises (Redis down);
    a failed publish takes the key back so the next submit rings again.
    """
    key = doorbell_key(settings, model_name)
    client = redis_client(settings)
    # An absolute expiry: a SET that a frozen Redis runs only when it resumes,
    # long after this request gave up (503), lands already expired instead of
    # holding later submits back with no message behind it.
    expires_ms = int(time.time() * 1000) + int(DOORBELL_TTL_S * 1000)
    try:
        if not client.set(key, job_id, nx=True, pxat=expires_ms):
            return False
        publish(job_id)
    except BaseException:  # also a SET that timed out here but ran in Redis
        with suppress(RedisError):
            client.delete(key)  # at worst another ringer's: one more message
        raise
    return True


def answer(settings: Settings, model_name: str) -> None:
    """A worker is about to claim: submits from now on ring again (never raises)."""
    try:
        redis_client(settings).delete(doorbell_key(settings, model_name))
    except RedisError as exc:  # the key expires; the sweeper covers anything stranded
        log.warning("doorbell not answered: %s", type(exc).__name__)


def answer_all(settings: Settings) -> None:
    """Answer the doorbells of every model of this queue (never raises)."""
    try:
        client = redis_client(settings)
        keys = list(client.scan_iter(match=doorbell_key(settings, "*"), count=100))
        if keys:
            client.delete(*keys)
    except RedisError as exc:
        log.warning("doorbells not answered: %s", type(exc).__name__)
