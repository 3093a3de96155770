"""Single images: a thread in each worker process takes them in micro-batches.

The API pushes each single-image job's ID to its model's Redis list
(config/image_queue.py). This thread blocks on those lists, takes up to
``MICROBATCH_MAX_JOBS`` IDs at once, starts the ones still queued with one
conditional UPDATE (so two workers never start one job, and an ID whose job
was cancelled or already started is dropped), and runs them through the batch
runner together: one forward pass for a burst of uploads from many requests.
The model sees each image alone along the batch dimension, so answers are
the same as unbatched.

It runs beside Celery's task loop in the same pool process and shares its
loaded models; studies arrive as Celery tasks (worker/tasks.py). A worker
that dies mid-batch leaves its images ``running`` with a stale heartbeat; the
sweeper requeues them and pushes their IDs again.
"""

from __future__ import annotations

import logging
import threading
import time

from redis import RedisError

from config import image_queue, warm
from db import lifecycle
from db.session import session_scope
from models.registry import Registry
from worker import runner

log = logging.getLogger(__name__)
BLOCK_S = 1.0
"""How long one wait on the lists blocks: bounds how late a stop is noticed."""
MODELS_REFRESH_S = 10.0
ERROR_PAUSE_S = 1.0


class Claimer:
    """The thread that serves single images in one worker process."""

    def __init__(self, ctx: runner.Context) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="image-claimer", daemon=True)
        self._models: list[str] = []
        self._models_at = 0.0
        self._warm_at = time.monotonic()  # worker/signals.py recorded it just now

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Take no more images; let the current micro-batch end (bounded wait)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _stopping(self) -> bool:
        return self._stop.is_set() or runner.SHUTDOWN.is_set()

    def _serve(self) -> None:
        while not self._stopping():
            try:
                self._still_warm()
                self.serve_once()
            except RedisError as exc:  # Redis away: try again shortly
                log.warning("single images: Redis unavailable: %s", type(exc).__name__)
                time.sleep(ERROR_PAUSE_S)
            except Exception:  # a database outage or a bug must not end the thread
                log.exception("single images: micro-batch failed")
                time.sleep(ERROR_PAUSE_S)

    def serve_once(self) -> dict[str, str]:
        """Wait for single images, run one micro-batch; each job's outcome."""
        settings = self.ctx.settings
        taken = image_queue.take(
            settings, self.models(), settings.microbatch_max_jobs, block_s=BLOCK_S
        )
        if taken is None:
            return {}
        _, ids = taken
        with session_scope(settings.database_url) as s:
            claimed = lifecycle.start_images(s, ids)
        log.info("micro-batch of %d single-image jobs", len(claimed))
        over = [c for c in claimed if c.attempts > settings.max_attempts]
        for c in over:
            runner.fail(self.ctx, c, f"started {settings.max_attempts} times without finishing")
        return runner.run([c for c in claimed if c not in over], self.ctx)

    def _still_warm(self) -> None:
        """Renew this process's entry in the warm set (config/warm.py) now and then."""
        now = time.monotonic()
        if now - self._warm_at >= warm.REFRESH_S:
            warm.mark_warm(self.ctx.settings, warm.this_process())
            self._warm_at = now

    def models(self) -> list[str]:
        """The models this worker can serve (the registry's), re-read now and then."""
        now = time.monotonic()
        if not self._models or now - self._models_at > MODELS_REFRESH_S:
            cards = Registry(self.ctx.settings.models_dirs).cards()
            self._models = sorted(c.name for c in cards) or [self.ctx.settings.default_model]
            self._models_at = now
        return self._models
