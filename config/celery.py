"""Celery configuration shared by the API (producer) and the workers (consumers).

Kept here, apart from ``worker/``, so the API can enqueue by task name without
importing worker code (which would pull in TensorFlow).

The numbers that make recovery work (README, "Reliability"):

* the Celery task ID of a job is its job ID, so Flower finds a job by its ID;
* a hung Redis costs a submit at most about ``2 * BROKER_TIMEOUT_S + 0.5`` s
  (3.5 s at the default 1.5) and a JSON 503: a publish gives up after one
  socket timeout (it retries only a connection that Redis dropped), a single
  image's RPUSH to its list after one (config/image_queue.py), and the rate
  limiter waits 0.5 s at most (docs/hardening.md);
* the broker's visibility timeout is longer than the hard time limit of a
  job, so Redis never hands a message to a second worker while the first may
  still legitimately run it; lost work is recovered by the sweeper instead
  (``worker/sweeper.py``), within ``STALE_AFTER_S + SWEEP_INTERVAL_S``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.settings import Settings

RUN_JOB_TASK = "lungct.run_job"
VISIBILITY_MARGIN_S = 300


def celery_config(settings: Settings, *, producer: bool = False) -> dict[str, Any]:
    """Broker, serialization and reliability options, identical on both sides.

    ``producer`` (the API) gets short socket timeouts: a request must not wait
    on a hung broker. Workers keep a longer one so a slow Redis does not drop
    their consuming connection.
    """
    hard_limit = settings.job_time_limit_s + 60
    socket_timeout = settings.broker_timeout_s if producer else max(10.0, settings.broker_timeout_s)
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_timeout_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_default_queue": settings.celery_queue,
        "task_routes": {RUN_JOB_TASK: {"queue": settings.celery_queue}},
        "task_acks_late": True,
        # A lost pool child is handled by worker/signals.py (requeue + publish
        # once), so Celery acknowledges the message instead of requeueing it.
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # Model loading in a fresh child can take longer than Celery's 4 s default.
        "worker_proc_alive_timeout": 120.0,
        "worker_hijack_root_logger": False,
        # A hung decoder or model call must not keep a job "running" forever.
        "task_soft_time_limit": settings.job_time_limit_s,
        "task_time_limit": hard_limit,
        # A running job keeps going while the worker reconnects to a restarted
        # Redis (its heartbeat shows it alive); its old message is redelivered
        # after the visibility timeout and finds the job finished.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_transport_options": {
            "visibility_timeout": hard_limit + VISIBILITY_MARGIN_S,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": settings.broker_timeout_s,
        },
    }


def publish_job(app: Celery, job_id: str) -> None:
    """Send only the job ID (as the task ID too); retry once on a dropped connection only.

    Raises the broker's error when Redis does not answer; the caller decides
    what the job becomes (the API fails it, the sweeper tries again later).
    A connection that Redis closed (a restart) fails at once and the retry on
    a fresh one succeeds; a read that timed out means a hung Redis, where a
    retry would only make the client wait twice more (issue 21: a frozen
    Redis answered a submit after 12 s), so it gives up after one timeout.
    """
    app.send_task(
        RUN_JOB_TASK,
        args=[job_id],
        task_id=job_id,
        retry=True,
        retry_policy={
            "max_retries": 1,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 0.5,
            "errback": _no_retry_after_timeout,
        },
    )


def _no_retry_after_timeout(exc: BaseException, _interval: float) -> None:
    """kombu's retry callback: raising here ends the retries with this error."""
    if timed_out(exc):
        raise exc


def timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it chains to is a socket or Redis timeout."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
