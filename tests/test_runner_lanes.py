"""The runner's forward lanes (worker/runner.py ``_predicted``): several passes at once,
results handed on in the order of the batches, each batch once."""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ingest import SliceSource
from worker.inference import BatchPrediction
from worker.runner import Decoded, Stages, _predicted


class SlowModel:
    """A stand-in predictor whose passes take a random time and record their overlap."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.card = SimpleNamespace(classes=["a", "b"])
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> BatchPrediction:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(random.uniform(0.001, 0.02))
        with self._lock:
            self.running -= 1
        first = batch[:, 0, 0, 0]  # each slice carries its index
        return BatchPrediction(np.stack([first, 1 - first], axis=1))


def _batches(n: int, size: int) -> list[list[Decoded]]:
    slices = [
        Decoded("job", SliceSource(i, f"s{i}", None, None, None), np.full((2, 2, 1), i / 100), None)
        for i in range(n)
    ]
    return [slices[i : i + size] for i in range(0, n, size)]


@pytest.mark.parametrize("lanes", [1, 3])
def test_batches_come_back_in_order_each_once(lanes: int) -> None:
    model = SlowModel(lanes)
    ctx: Any = SimpleNamespace(stages=Stages())
    batches = _batches(40, 4)
    out = list(_predicted(iter(batches), model, ctx))  # type: ignore[arg-type]
    assert [b for b, _ in out] == batches
    indexes = [row.slice_index for _, rows in out for row in rows]
    assert indexes == list(range(40))
    assert all(
        row.probabilities["a"] == pytest.approx(row.slice_index / 100)
        for _, rows in out
        for row in rows
    )
    assert model.most == lanes if lanes == 1 else 1 < model.most <= lanes
    assert ctx.stages.seconds["forward"] > 0


def test_closing_early_lets_the_passes_in_flight_end() -> None:
    """A run that stops (cancelled, shutting down) closes the generator: no pass is left
    running behind it."""
    model = SlowModel(3)
    ctx: Any = SimpleNamespace(stages=Stages())
    predicted = _predicted(iter(_batches(40, 4)), model, ctx)  # type: ignore[arg-type]
    next(predicted)
    predicted.close()
    assert model.running == 0


def test_pools_are_kept_per_run_thread_and_dropped_in_a_forked_child() -> None:
    """A thread's next run reuses its pools; another thread (the claimer beside Celery's
    task thread) has its own; a forked child starts without the parent's threads."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from worker import runner

    mine = runner.kept_pool("decode", 2)
    assert runner.kept_pool("decode", 2) is mine
    assert runner.kept_pool("decode", 3) is not mine
    theirs: list[ThreadPoolExecutor] = []
    other = threading.Thread(target=lambda: theirs.append(runner.kept_pool("decode", 2)))
    other.start()
    other.join()
    assert theirs[0] is not mine
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new pool that works
        fresh = runner.kept_pool("decode", 2)
        ok = fresh is not mine and fresh.submit(lambda: 7).result(timeout=5) == 7
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
