"""XLA compilation and mixed precision for the forward pass, against the default, side by side.

Usage: ``python -m bench.xla [--model NAME] [--batch 64] [--rounds 15]``

Times one batch of the shipped model three ways, alternating (plain, XLA,
bf16, plain, ...): ``predict_on_batch`` as the worker calls it today; the
same model called inside ``tf.function(jit_compile=True)``; and a copy whose
layers compute in ``mixed_bfloat16``. Prints images/s (median) and the
largest difference in the output probabilities, so a faster variant that
changes answers is visible.
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
    import keras
    import tensorflow as tf

    compiled = tf.function(lambda t: model(t, training=False), jit_compile=True)

    def bf16_layer(layer):  # type: ignore[no-untyped-def]
        return layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})

    mixed = keras.models.clone_model(model, clone_function=bf16_layer)
    mixed.set_weights(model.get_weights())
    return {
        "predict_on_batch (today)": lambda x: np.asarray(model.predict_on_batch(x)),
        "XLA jit_compile": lambda x: compiled(tf.constant(x)).numpy(),
        "mixed_bfloat16": lambda x: np.asarray(mixed.predict_on_batch(x), dtype=np.float32),
    }


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
    reference = fns["predict_on_batch (today)"](x)
    for fn in fns.values():  # warm up: tracing, compilation
        fn(x), fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["predict_on_batch (today)"])
    print(f"{card.name}, batch {args.batch}, {args.rounds} alternating rounds")
    for name, fn in fns.items():
        median = statistics.median(times[name])
        diff = float(np.abs(fn(x) - reference).max())
        print(
            f"  {name:<26} {args.batch / median:7.0f} images/s  "
            f"x{base / median:4.2f}  max |dp| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
