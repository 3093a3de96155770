"""The worker's forward pass on ONNX Runtime: the same Keras model, converted when it is loaded.

On a CPU host TensorFlow runs this project's small CNNs well below what the
cores can do: per-op dispatch and its thread pool cost as much as the
convolutions at batches of 8-64. ONNX Runtime runs the same graph (exported
by Keras with tf2onnx, batch-norm already folded: models/folding.py) 1.7-2.3x
faster on the 2-core VM (docs/models.md, "Serving: ONNX Runtime on a CPU host"). Nothing is
stored: the model is exported to memory each time a worker process loads it
(about half a second), so the graph always matches the ``.keras`` file and the
OOD feature outputs the card asks for.

The converted model is checked against Keras on one random batch, every output
(probabilities and feature vectors); when they differ by more than
:data:`TOLERANCE`, or anything fails on the way, the worker logs a warning and
runs Keras. Training, the card's metrics and Grad-CAM always use Keras.

ONNX Runtime's telemetry is switched off (``ORT_DISABLE_TELEMETRY``, below).

``SERVING_RUNTIME`` chooses: ``auto`` (ONNX Runtime on hosts where TensorFlow
sees no GPU, since the CPU build of ONNX Runtime would take a GPU host's work
off its GPU), ``onnx`` (always, where it converts) or ``keras``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# ONNX Runtime's builds carry Microsoft's 1DS telemetry (events to
# mobile.events.data.microsoft.com, a session file in the temporary folder). A
# service that handles patient studies sends nothing it was not asked to: off,
# before onnxruntime is first imported (it reads this when it loads).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

TOLERANCE = 1e-4
"""Largest difference from Keras, on any output, that the converted model may show."""

Runner = Callable[[np.ndarray], list[np.ndarray]]
"""A forward pass: a float32 batch (n, h, w, c) -> every output of the model, in order."""


def wanted(runtime: str) -> bool:
    """Whether ``SERVING_RUNTIME`` asks for ONNX Runtime on this host."""
    if runtime == "keras":
        return False
    if runtime == "onnx":
        return True
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        return False
    return keras.backend.backend() == "tensorflow" and not tf.config.list_physical_devices("GPU")


def onnx_runner(model: Any, input_shape: tuple[int, ...], threads: int = 0) -> Runner | None:
    """``model`` (Keras, TensorFlow backend) on ONNX Runtime, checked against Keras;
    None when it cannot be converted, or differs by more than :data:`TOLERANCE`.

    ``threads``: the threads of one forward pass (0: ONNX Runtime's default, one per
    physical core). With 1 the pass runs in the calling thread, and the session
    serves several callers at once (its ``run`` is thread-safe): the worker's lanes.
    """
    try:
        import onnxruntime as ort

        batch = np.random.default_rng(0).random((4, *input_shape), dtype=np.float32)
        expected = _outputs(model, batch)  # also builds the model, which the export needs
        session = ort.InferenceSession(_exported(model), _options(ort, threads))
        runner = _runner(session)
        diff = _max_difference(expected, runner(batch))
    except Exception as exc:  # an op tf2onnx cannot convert, a missing package, ...
        log.warning("model %s: ONNX Runtime not used (%s: %s)", model.name, type(exc).__name__, exc)
        return None
    if diff > TOLERANCE:
        log.warning("model %s: ONNX Runtime differs from Keras by %.1e; not used", model.name, diff)
        return None
    log.info("model %s: forward pass on ONNX Runtime (max diff %.0e)", model.name, diff)
    return runner


def _exported(model: Any) -> bytes:
    """The model as an ONNX file's bytes (Keras export, via tf2onnx).

    Keras's tf2onnx shim asks ``hasattr(np, "object")``, which NumPy 2 answers with a
    FutureWarning that says nothing about this model: it is silenced for the export.
    """
    converted = _autograph_modules()
    try:
        with tempfile.TemporaryDirectory(prefix="lungct-onnx-") as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
            logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO: opset, optimizer
            path = Path(tmp) / "model.onnx"
            model.export(str(path), format="onnx", verbose=False)
            return path.read_bytes()
    finally:
        _drop_sources(_autograph_modules() - converted)


AUTOGRAPH_PREFIX = "__autograph_generated_file"


def _autograph_modules() -> set[str]:
    return {name for name in sys.modules if name.startswith(AUTOGRAPH_PREFIX)}


def _drop_sources(names: set[str]) -> None:
    """Delete the source files TensorFlow's autograph wrote for the export's trace.

    autograph writes every function it converts to a ``.py`` file in the
    temporary folder and loads it as a module, and deletes the file only when
    the process exits: a worker would keep one in its temporary folder for as
    long as it lives (the S3 tests check that a worker leaves nothing on its
    disk). A module in ``sys.modules`` has been executed already, so its file
    is no longer needed.
    """
    for name in names:
        source = getattr(sys.modules.get(name), "__file__", None)
        if source:
            with contextlib.suppress(FileNotFoundError):
                os.remove(source)


def _options(ort: Any, threads: int) -> Any:
    """Session options: ``threads`` intra-op threads (0: one per physical core, ONNX
    Runtime's default), not spinning between ops, so idle threads leave the cores to
    the decode threads and the API (the worker shares them)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return options


def _runner(session: Any) -> Runner:
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return list(session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)}))

    return run


def _outputs(model: Any, batch: np.ndarray) -> list[np.ndarray]:
    """Every output of the model in inference mode, as arrays."""
    out = model.predict_on_batch(batch)
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]


def _max_difference(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest absolute difference over every output (the random check batch of 4)."""
    if len(got) != len(expected):
        raise ValueError(f"{len(got)} outputs instead of {len(expected)}")
    return max(float(np.max(np.abs(e - g))) for e, g in zip(expected, got, strict=True))
