"""Celery signal handlers: per-process set-up, graceful stop, sweeper, lost children.

* **pool child start** (``worker_process_init``): drop database connections
  inherited from the parent (SQLAlchemy pooling docs), listen for SIGUSR2
  (stop after the current batch), load the default model once so the first
  job does not pay for it, say so in Redis (config/warm.py: ``/readyz`` waits
  for a warm process), and start the single-image claimer (worker/claimer.py).
* **worker ready** (main process): start the sweeper thread
  (:mod:`worker.sweeper`) and the metrics endpoint (:mod:`worker.metrics`).
* **worker shutting down** (SIGTERM, Ctrl-C, ``docker stop``): send SIGUSR2
  to the pool children; a running job stops after its current batch, goes
  back to ``queued`` and is published again, so another worker continues it
  within seconds and this worker exits without waiting for the whole job.
* **task failure in the main process**: a pool child that died (OOM kill,
  segfault) or was killed at the hard time limit. The job is requeued (the
  attempt counts) and published once, or failed at the time limit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import billiard
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery
from celery.signals import (
    task_failure,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from redis import Redis, RedisError

from config import Settings, get_settings, warm
from config.celery import RUN_JOB_TASK
from config.metrics import mark_process_dead
from db import lifecycle
from db.models import JobKind
from db.session import dispose_after_fork, session_scope
from worker import metrics, runner
from worker.claimer import Claimer
from worker.context import worker_context

log = logging.getLogger(__name__)
STOP_SIGNAL = signal.SIGUSR2
_sweeper_stop = threading.Event()
_claimers: list[Claimer] = []


@worker_process_init.connect
def _init_child(sender: Any = None, **_kwargs: object) -> None:
    """Fork safety first, then the stop signal, the default model, the image claimer."""
    dispose_after_fork()
    signal.signal(STOP_SIGNAL, lambda *_: runner.SHUTDOWN.set())
    from worker.celery_app import celery
    from worker.inference import warm_up

    ctx = worker_context(celery)
    try:
        warm_up(ctx.settings.default_model, ctx.settings)
    except Exception:  # a missing model must not stop the worker; jobs report it
        log.exception("could not preload the default model")
    _say_warm(ctx.settings)
    claimer = Claimer(ctx)
    claimer.start()
    _claimers.append(claimer)
    log.info("pool process %d ready for jobs", os.getpid())  # the model is warm by now


@worker_process_shutdown.connect
def _child_exits(**_kwargs: object) -> None:
    """A pool process ends: its micro-batch finishes, its live gauges stop counting."""
    for claimer in _claimers:
        claimer.stop()
        try:
            warm.forget(claimer.ctx.settings, warm.this_process())
        except RedisError:  # the entry expires by itself
            log.debug("could not remove this process from the warm set")
    mark_process_dead(os.getpid())


def _say_warm(settings: Settings) -> None:
    """Record this pool process as warm (best effort: the claimer repeats it)."""
    try:
        warm.mark_warm(settings, warm.this_process())
    except RedisError as exc:
        log.warning("could not record this process as warm: %s", type(exc).__name__)


@worker_ready.connect
def _start_sweeper_and_metrics(sender: Any = None, **_kwargs: object) -> None:
    app: Celery = sender.app
    thread = threading.Thread(target=_sweep_forever, args=(app,), name="sweeper", daemon=True)
    thread.start()
    metrics.serve(get_settings())


def _sweep_forever(app: Celery) -> None:
    """Sweep every SWEEP_INTERVAL_S until the worker stops; errors wait for the next round."""
    from worker.sweeper import sweep

    ctx = worker_context(app)
    redis = Redis.from_url(
        ctx.settings.redis_url,
        socket_timeout=ctx.settings.broker_timeout_s,
        socket_connect_timeout=ctx.settings.broker_timeout_s,
    )
    while not _sweeper_stop.wait(ctx.settings.sweep_interval_s):
        try:
            sweep(ctx, redis)
        except Exception as exc:  # broker or database away: try again next round
            log.warning("sweep failed: %s: %s", type(exc).__name__, exc)


@worker_shutting_down.connect
def _stop_children(**_kwargs: object) -> None:
    """Ask every pool child to stop after its current batch and hand its job back."""
    _sweeper_stop.set()
    for child in billiard.active_children():
        try:
            os.kill(child.pid, STOP_SIGNAL)
        except ProcessLookupError:
            continue


@task_failure.connect
def _child_lost(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
    args: Any = None, **_kwargs: object,
) -> None:  # fmt: skip
    """Recover the job of a pool child that died or hit the hard time limit."""
    if getattr(sender, "name", None) != RUN_JOB_TASK or not args:
        return
    job_id = str(args[0])
    ctx = worker_context(sender.app)
    try:
        if isinstance(exception, TimeLimitExceeded):
            message = "the job exceeded its time limit (JOB_TIME_LIMIT_S)"
            runner.fail_running(ctx, job_id, message)
        elif isinstance(exception, WorkerLostError):
            with session_scope(ctx.settings.database_url) as s:
                requeued = lifecycle.requeue(s, job_id)
            if requeued:
                log.warning("job %s: its worker process died; requeued", job_id)
                ctx.republish(job_id, JobKind.STUDY, "")
    except Exception:  # the sweeper recovers it later
        log.exception("job %s: could not recover after %r", job_id, exception)
