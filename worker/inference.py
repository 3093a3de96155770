"""Per-process model cache and batched prediction.

A worker process loads each model once and keeps it (Celery "Instantiation"
pattern); jobs then only pay the forward pass. TensorFlow/Keras is imported
lazily here so that importing the task module stays cheap and fork-safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from config import get_settings
from models.registry import ModelCard, Registry
from worker.metrics import MODEL_LOAD_SECONDS

log = logging.getLogger(__name__)
_lock = threading.Lock()
_cache: dict[str, Predictor] = {}


@dataclass
class Predictor:
    """A loaded model with its card; ``predict`` takes a preprocessed batch."""

    card: ModelCard
    model: Any

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) for a float32 batch (n, h, w, c)."""
        out = self.model.predict_on_batch(batch)
        return np.asarray(out, dtype=np.float32)


def registry() -> Registry:
    """The registry over the configured model folders."""
    return Registry(get_settings().models_dirs)


def _enable_gpu_memory_growth() -> None:
    """Let several processes share a GPU instead of one grabbing all memory."""
    try:
        import tensorflow as tf
    except ImportError:  # another Keras backend (e.g. JAX for GPU benchmarks)
        return
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised in this process
            tf.config.experimental.set_memory_growth(gpu, True)


def get_predictor(name: str) -> Predictor:
    """The cached predictor for model ``name``, loading it on first use."""
    with _lock:
        if name not in _cache:
            from models.serving import load_model

            _enable_gpu_memory_growth()
            card = registry().get(name)
            log.info("loading model %s %s from %s", card.name, card.version, card.path)
            started = time.perf_counter()
            _cache[name] = Predictor(card=card, model=load_model(card))
            MODEL_LOAD_SECONDS.labels(name).set(time.perf_counter() - started)
        return _cache[name]


def warm_up(name: str) -> None:
    """Load ``name`` and trace its forward pass before the first job arrives.

    Two batch sizes, because TensorFlow's ``reduce_retracing`` then generalises
    the batch dimension: a study's shorter last batch does not trigger a new
    trace (about a second) in the middle of a job.
    """
    predictor = get_predictor(name)
    spec = predictor.card.input
    for n in (get_settings().inference_batch_size, 1):
        predictor.predict(np.zeros((n, spec.height, spec.width, spec.channels), np.float32))
