"""INFERENCE_BATCH_SIZE=auto: the worker times candidate batch sizes and keeps the fastest."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from config import Settings
from worker.inference import BATCH_CANDIDATES, Predictor, batch_size, tune_batch_size

# seconds per image of each batch size, as a 2-core CPU showed (16 fastest, 32 slow)
PER_IMAGE_S = {8: 1.3e-3, 16: 1.1e-3, 32: 2.0e-3, 64: 1.8e-3, 128: 1.4e-3}


class SimulatedDevice:
    """A predict function whose calls cost known time on a simulated clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> None:
        self.calls.append(len(batch))
        self.now += PER_IMAGE_S[len(batch)] * len(batch)

    def clock(self) -> float:
        return self.now


def test_the_fastest_size_per_image_is_chosen() -> None:
    device = SimulatedDevice()
    chosen = tune_batch_size(device.predict, (32, 32, 1), clock=device.clock)
    assert chosen == 16
    assert set(device.calls) == set(BATCH_CANDIDATES)


def test_a_moment_of_load_does_not_decide() -> None:
    """Each size is timed twice and the faster run counts: one slow run is ignored."""
    device = SimulatedDevice()
    stalls = iter([5.0])  # the first timed run of size 16 (the fastest) hits a stall

    def clock() -> float:
        return device.now

    def predict(batch: np.ndarray) -> None:
        device.predict(batch)
        if len(batch) == 16 and device.calls.count(16) == 2:
            device.now += next(stalls, 0.0)

    assert tune_batch_size(predict, (8, 8, 1), clock=clock) == 16


def _predictor(device: SimulatedDevice) -> Predictor:
    card = SimpleNamespace(name="sim", input=SimpleNamespace(shape=(8, 8, 1)))
    predictor = Predictor(card=card, model=None)  # type: ignore[arg-type]
    predictor.predict = device.predict  # type: ignore[method-assign]
    return predictor


def test_a_number_is_used_as_it_is_and_auto_is_timed_once() -> None:
    device = SimulatedDevice()
    predictor = _predictor(device)
    assert batch_size(predictor, 24) == 24 and not device.calls
    tuned = batch_size(predictor, "auto")
    calls = len(device.calls)
    assert tuned in BATCH_CANDIDATES and calls > 0
    assert batch_size(predictor, "auto") == tuned and len(device.calls) == calls


@pytest.mark.parametrize("value", ["auto", "16"])
def test_the_setting_takes_auto_or_a_number(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("INFERENCE_BATCH_SIZE", value)
    assert Settings().inference_batch_size == (value if value == "auto" else int(value))
    monkeypatch.delenv("INFERENCE_BATCH_SIZE")
    assert Settings().inference_batch_size == "auto"


def test_sizes_about_as_fast_keep_the_smallest() -> None:
    """Within TUNE_TIE of the fastest the smallest size is kept (flat CPU timings pick a
    small batch that spreads a small job over the lanes); a clear winner still wins."""
    flat = {8: 2.7e-3, 16: 2.68e-3, 32: 2.66e-3, 64: 2.6e-3, 128: 2.65e-3}
    gpu = {8: 1e-3, 16: 5e-4, 32: 2.5e-4, 64: 1.3e-4, 128: 7e-5}
    for per_image, want in ((flat, 8), (gpu, 128)):
        device = SimulatedDevice()
        saved = dict(PER_IMAGE_S)
        PER_IMAGE_S.update(per_image)
        try:
            assert tune_batch_size(device.predict, (8, 8, 1), clock=device.clock) == want
        finally:
            PER_IMAGE_S.update(saved)


def test_lanes_time_their_calls_at_once() -> None:
    """With lanes, each size is timed with that many calls in flight (at least one each)."""
    lock = threading.Lock()
    running = [0]
    seen: set[int] = set()

    def predict(batch: np.ndarray) -> None:
        with lock:
            running[0] += 1
            seen.add(running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1

    chosen = tune_batch_size(predict, (8, 8, 1), candidates=(64, 128), images=64, lanes=2)
    assert chosen in (64, 128)
    assert max(seen) == 2
