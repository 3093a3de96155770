"""Per-process model cache and batched prediction.

A worker process loads each model once and keeps it (Celery "Instantiation"
pattern); jobs then only pay the forward pass. TensorFlow/Keras is imported
lazily here so that importing the task module stays cheap and fork-safe.

When the model card has an out-of-distribution detector (``ood`` section and
``ood.npz``, see models/ood.py), the model is wrapped at load time in a Keras
model with extra outputs (its feature vectors), so one forward pass gives the
probabilities and the OOD score; the score itself is numpy. Probabilities are
calibrated with the card's temperature (``calibration`` section) when present.

The batch size is ``INFERENCE_BATCH_SIZE``, or with ``auto`` (the default) the
fastest of :data:`BATCH_CANDIDATES` on this process's device, timed once per
model when it is warmed up: on a 2-core CPU 16 slices a batch ran about 1.5x
faster than 64 (cache sizes), while a GPU wants large batches.

On ONNX Runtime the worker runs ``FORWARD_LANES`` forward passes at once (see
:func:`forward_lanes`), each on its own share of the cores, instead of one pass
split over all of them: the decode threads share those cores, and a pass split
over every core waits for its slowest part whenever a decode thread holds one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from config import Settings
from models import onnx_runtime
from models.calibration import apply_temperature
from models.onnx_runtime import Runner
from models.ood import OODDetector
from models.registry import ModelCard, Registry
from worker.metrics import MODEL_LOAD_SECONDS

log = logging.getLogger(__name__)
_lock = threading.Lock()
_cache: dict[str, Predictor] = {}
BATCH_CANDIDATES = (8, 16, 32, 64, 128)
MAX_AUTO_LANES = 8
"""``FORWARD_LANES=auto`` on ONNX Runtime: one lane per usable CPU, at most this many."""
TUNE_IMAGES = 64
"""Images timed per candidate batch size (twice, the faster run counts)."""


@dataclass
class BatchPrediction:
    """What one forward pass gives for a batch of n slices."""

    probabilities: np.ndarray  # (n, classes), calibrated when the card has a temperature
    ood_score: np.ndarray | None = None  # (n,), None when the model has no OOD detector
    out_of_distribution: np.ndarray | None = None  # (n,) bool


@dataclass
class Predictor:
    """A loaded model with its card; ``predict`` takes a preprocessed batch."""

    card: ModelCard
    model: Any  # batch-norm folded (models/folding.py)
    forward: Any = None  # the model with feature outputs when ``ood`` is set
    ood: OODDetector | None = None
    temperature: float = 1.0
    run: Runner | None = None  # ``forward`` on ONNX Runtime (models/onnx_runtime.py), if used
    lanes: int = 1  # forward passes run at once (FORWARD_LANES): ``run`` is thread-safe
    _gradcam: Any = field(default=None, repr=False)
    tuned_batch: int | None = None  # INFERENCE_BATCH_SIZE=auto: the size timed fastest
    _tuning: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, card: ModelCard, runtime: str = "auto", lanes: int | str = 1) -> Predictor:
        """Load the model, its OOD detector and temperature as the card describes them.

        The worker runs a copy with batch-norm folded into the convolutions
        (models/folding.py): the same outputs, feature vectors and Grad-CAM maps
        to float rounding (1e-6), about 1.2x faster on a CPU. ``runtime``
        (``SERVING_RUNTIME``) may move its forward pass onto ONNX Runtime
        (models/onnx_runtime.py): the same outputs to 1e-4, checked at load;
        ``lanes`` (``FORWARD_LANES``) then sets how many passes run at once.
        """
        predictor = cls._keras(card)
        if onnx_runtime.wanted(runtime):
            count = forward_lanes(lanes)
            predictor.run = onnx_runtime.onnx_runner(
                predictor.forward, card.input.shape, lane_threads(count)
            )
            if predictor.run is not None:
                predictor.lanes = count
        if predictor.run is None and lanes not in ("auto", 1):
            log.info("model %s: FORWARD_LANES=%s unused: Keras runs one pass", card.name, lanes)
        return predictor

    @classmethod
    def _keras(cls, card: ModelCard) -> Predictor:
        from models.folding import fold_batchnorm
        from models.serving import load_model, with_features

        model = fold_batchnorm(load_model(card), card.input.shape)
        temperature = float((card.raw.get("calibration") or {}).get("temperature", 1.0))
        ood_file = card.path / str((card.raw.get("ood") or {}).get("file", "ood.npz"))
        if not card.raw.get("ood") or not ood_file.is_file():
            return cls(card, model, model, None, temperature)
        detector = OODDetector.load(ood_file)
        forward = with_features(model)
        if len(forward.outputs) - 1 != len(detector.layers):
            log.warning("model %s: OOD detector does not match the model; OOD off", card.name)
            return cls(card, model, model, None, temperature)
        return cls(card, model, forward, detector, temperature)

    def explain(self, batch: np.ndarray, class_index: list[int] | None = None) -> np.ndarray:
        """Grad-CAM heat maps (n, h, w) in [0, 1] (models/gradcam.py); built on first use.

        Meant for a few top slices per series after prediction (one forward and one
        backward pass); storing them is up to the caller.
        """
        if self._gradcam is None:
            from models.gradcam import GradCam

            self._gradcam = GradCam(self.model)
        return self._gradcam(batch, class_index)

    def predict(self, batch: np.ndarray) -> BatchPrediction:
        """Calibrated probabilities and OOD scores for a float32 batch (n, h, w, c)."""
        if self.run is not None:
            outputs = self.run(batch)
        else:
            out = (self.forward or self.model).predict_on_batch(batch)
            outputs = list(out) if isinstance(out, list | tuple) else [out]
        if self.ood is None:
            probs = np.asarray(outputs[0], dtype=np.float32)
            return BatchPrediction(apply_temperature(probs, self.temperature))
        probs, *features = (np.asarray(o) for o in outputs)
        scores, flags = self.ood.score(features, batch)
        return BatchPrediction(apply_temperature(probs, self.temperature), scores, flags)


def _enable_gpu_memory_growth() -> None:
    """Let several processes share a GPU instead of one grabbing all memory."""
    try:
        import tensorflow as tf
    except ImportError:  # another Keras backend (e.g. JAX for GPU benchmarks)
        return
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised in this process
            tf.config.experimental.set_memory_growth(gpu, True)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a pinned container sees its own)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def forward_lanes(setting: int | str) -> int:
    """Forward passes at once on ONNX Runtime: ``FORWARD_LANES``, or for ``auto`` one
    per usable CPU, at most :data:`MAX_AUTO_LANES`.

    ``python -m bench.lanes`` measures it (docs/benchmarks.md): on a 2-core VM,
    with 924 JPEG slices decoded on 2 threads beside the model, two one-thread
    passes side by side ran 1.09x the slices/s of one pass on both cores.
    """
    if setting != "auto":
        return int(setting)
    return max(1, min(MAX_AUTO_LANES, usable_cpus()))


def lane_threads(lanes: int) -> int:
    """Threads for each of ``lanes`` passes: the usable CPUs shared out, or 0 (ONNX
    Runtime's default, every physical core) for a single lane."""
    return 0 if lanes <= 1 else max(1, usable_cpus() // lanes)


def get_predictor(
    name: str, models_dirs: Sequence[Path], runtime: str = "auto", lanes: int | str = 1
) -> Predictor:
    """The cached predictor for model ``name``, loading it on first use.

    ``models_dirs``: where to look for its card, the caller's ``MODELS_DIRS``
    (the worker passes its settings'), so this module reads no settings itself;
    ``runtime`` and ``lanes``: its ``SERVING_RUNTIME`` and ``FORWARD_LANES``
    (:meth:`Predictor.load`; the first load decides).
    """
    with _lock:
        if name not in _cache:
            _enable_gpu_memory_growth()
            card = Registry(models_dirs).get(name)
            log.info("loading model %s %s from %s", card.name, card.version, card.path)
            started = time.perf_counter()
            _cache[name] = Predictor.load(card, runtime, lanes)
            MODEL_LOAD_SECONDS.labels(name).set(time.perf_counter() - started)
        return _cache[name]


def predictor_for(name: str, settings: Settings) -> Predictor:
    """:func:`get_predictor` as a worker with ``settings`` loads it: its MODELS_DIRS,
    SERVING_RUNTIME and FORWARD_LANES (the worker, its warm-up, and ``bench.paths``'s
    bare pass, which must run the model the way the worker does)."""
    return get_predictor(
        name, settings.models_dirs, settings.serving_runtime, settings.forward_lanes
    )


def batch_size(predictor: Predictor, setting: int | str) -> int:
    """Slices per forward pass: ``INFERENCE_BATCH_SIZE``, or for ``auto`` the size
    :func:`tune_batch_size` found fastest for this model in this process (timed once)."""
    if setting != "auto":
        return int(setting)
    with predictor._tuning:
        if predictor.tuned_batch is None:
            predictor.tuned_batch = tune_batch_size(
                predictor.predict, predictor.card.input.shape, lanes=predictor.lanes
            )
            log.info("model %s: batch size %d (auto)", predictor.card.name, predictor.tuned_batch)
    return predictor.tuned_batch


TUNE_TIE = 0.05
"""Batch sizes within this fraction of the fastest count as equally fast: the smallest of
them is kept. Smaller batches start the model sooner and spread a small job over the
lanes; on a CPU the sizes often time within a few per cent of each other (one thread:
8 to 128 at 374-382 images/s), where the largest would leave a 100-slice zip on one lane."""


def tune_batch_size(
    predict: Callable[[np.ndarray], object],
    shape: tuple[int, ...],
    candidates: Sequence[int] = BATCH_CANDIDATES,
    images: int = TUNE_IMAGES,
    clock: Callable[[], float] = time.perf_counter,
    lanes: int = 1,
) -> int:
    """The smallest candidate batch size within :data:`TUNE_TIE` of the most images per
    second through ``predict``, run ``lanes`` calls at once as the worker runs them.

    Each size is run once untimed (tracing), then ``images`` (at least one batch per
    lane) are timed twice and the faster run counts, so a moment of load elsewhere on
    the machine does not decide. About 1,000 images in all: a second or two on a
    CPU, nothing on a GPU.
    """
    batch = np.random.default_rng(0).random((max(candidates), *shape), dtype=np.float32)
    rates: dict[int, float] = {}
    with ThreadPoolExecutor(max_workers=lanes) as pool:
        for size in candidates:
            predict(batch[:size])
            calls = max(lanes, -(-images // size))
            best = float("inf")
            for _ in range(2):
                started = clock()
                list(pool.map(predict, [batch[:size]] * calls))
                best = min(best, clock() - started)
            rates[size] = calls * size / max(best, 1e-9)
    log.info("batch sizes timed (images/s): %s", {k: round(v) for k, v in rates.items()})
    fastest = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= (1 - TUNE_TIE) * fastest)


def warm_up(name: str, settings: Settings) -> None:
    """Load ``name`` and trace its forward pass (and Grad-CAM) before the first job arrives.

    Two batch sizes, because TensorFlow's ``reduce_retracing`` then generalises
    the batch dimension: a study's shorter last batch, or another number of
    top slices, does not trigger a new trace (about a second) in a job.
    """
    predictor = predictor_for(name, settings)
    spec = predictor.card.input
    for n in (batch_size(predictor, settings.inference_batch_size), 1):
        predictor.predict(np.zeros((n, spec.height, spec.width, spec.channels), np.float32))
    if settings.heatmap_slices_per_series:
        for n in (2, 1):
            predictor.explain(np.zeros((n, spec.height, spec.width, spec.channels), np.float32))
