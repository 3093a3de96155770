"""XLA, mixed precision, batch-norm folding and ONNX Runtime for the forward pass, side by side.

Usage: ``python -m bench.xla [--model NAME] [--batch 64] [--rounds 15]``

Times one batch of the shipped model several ways, alternating: the saved
model's ``predict_on_batch``; the copy the worker runs, with batch-norm folded
into the convolutions (models/folding.py); that copy called inside
``tf.function(jit_compile=True)`` (TensorFlow only: under ``KERAS_BACKEND=jax``
every call is XLA-compiled already, so there is no "XLA off" to compare); and
the folded copy with its layers computing in ``mixed_bfloat16``; and the folded
copy on ONNX Runtime (models/onnx_runtime.py, what a CPU worker runs). Prints
images/s (median), the speed against the saved model, and the largest
difference in the output probabilities, so a faster variant that changes
answers is visible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def variants(model) -> dict[str, Callable[[np.ndarray], np.ndarray]]:  # type: ignore[no-untyped-def]
    """The ways to run ``model`` (as saved) that this backend offers, by name."""
    import keras

    from models.folding import fold_batchnorm

    folded = fold_batchnorm(model)

    def bf16_layer(layer):  # type: ignore[no-untyped-def]
        return layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})

    mixed = keras.models.clone_model(folded, clone_function=bf16_layer)
    mixed.set_weights(folded.get_weights())
    fns = {
        "as saved": lambda x: np.asarray(model.predict_on_batch(x)),
        "folded (Keras)": lambda x: np.asarray(folded.predict_on_batch(x)),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        from models.onnx_runtime import onnx_runner

        compiled = tf.function(lambda t: folded(t, training=False), jit_compile=True)
        fns["folded + XLA jit_compile"] = lambda x: compiled(tf.constant(x)).numpy()
        run = onnx_runner(folded, tuple(model.input_shape[1:]))
        if run is not None:  # the worker's on a CPU host (SERVING_RUNTIME=auto)
            fns["folded on ONNX Runtime"] = lambda x: run(x)[0]
    fns["folded + mixed_bfloat16"] = lambda x: np.asarray(
        mixed.predict_on_batch(x), dtype=np.float32
    )
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lungct-cnn6")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    from config import Settings
    from models.registry import Registry
    from models.serving import load_model

    card = Registry(Settings().models_dirs).get(args.model)
    model = load_model(card)
    spec = card.input
    x = np.random.default_rng(0).random((args.batch, spec.height, spec.width, spec.channels))
    x = x.astype(np.float32)
    fns = variants(model)
    reference = fns["as saved"](x)
    for fn in fns.values():  # warm up: tracing, compilation
        fn(x), fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["as saved"])
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"{card.name}, batch {args.batch}, {args.rounds} alternating rounds, {backend}")
    for name, fn in fns.items():
        median = statistics.median(times[name])
        diff = float(np.abs(fn(x) - reference).max())
        print(
            f"  {name:<26} {args.batch / median:7.0f} images/s  "
            f"x{base / median:4.2f}  max |dp| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
