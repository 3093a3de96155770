"""GPU figures: the bare model per batch size vs the worker's own batched path.

Usage (on a machine with a GPU; with no TensorFlow GPU build, Keras 3 runs the
same ``.keras`` file on JAX)::

    KERAS_BACKEND=jax python -m bench.gpu [--model NAME] [--n 512] [--batches 32 64 128]

On a lent machine without our virtualenv: ``bash scripts/gpu_pack.sh`` here,
``bash scripts/gpu_run.sh`` there with ``.gpu`` carried (docs/benchmarks.md, GPU).

Prints, in one run:

(a) the bare forward pass on synthetic input already in memory, images/s
    per batch size (the model's ceiling on this device);
(b) the worker's batched path at each batch size: ingest plan of a stored zip
    of real IQ-OTH/NCCD slices, thread-pool decoding a window ahead,
    preprocessing, ``predict`` per batch (what a job costs minus HTTP, queue and
    database, which the CPU benchmarks show to be small);
(c) (b)'s best / (a)'s best: the share of the device the pipeline can feed
    (goal >= 70 %; below it, decoding on the CPU is the bottleneck: raise
    DECODE_THREADS or the worker's CPU share).

Paths alternate per batch size, medians of ``--repeat`` timings. Then, unless
``--table-only``, the same command runs ``bench.xla`` (XLA and mixed precision
on and off) and ``bench.paths`` (every user path beside the seeds' way, the
1,000-slice study end to end and the bare forward pass, with make run's
settings), so one command gives every GPU figure. ``bench.paths`` needs the
worker's TensorFlow (Grad-CAM): on a JAX-only host it is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# JAX takes 75 % of a GPU's memory up front; this process keeps its model
# while bench.xla runs in a child, which would then find too little left.
# Allocating as needed (what the worker does under TensorFlow) lets both run.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def bare(predictor, batch: int, n: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds to push ``n`` in-memory images through the model ``batch`` at a time."""
    spec = predictor.card.input
    x = np.random.default_rng(0).random((batch, spec.height, spec.width, spec.channels))
    x = x.astype(np.float32)
    start = time.perf_counter()
    for _ in range(max(1, n // batch)):
        predictor.predict(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=512, help="images per timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--table-only", action="store_true", help="skip bench.xla, bench.paths")
    args = parser.parse_args()

    from bench.throughput import batched, make_zip, pick_slices
    from config import get_settings
    from worker.inference import batch_size, get_predictor

    settings = get_settings()
    predictor = get_predictor(args.model or settings.default_model, settings.models_dirs)
    files = pick_slices(100)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        archive = make_zip([files[i % len(files)] for i in range(args.n)], Path(tmp) / "s.zip")
        print(f"model {predictor.card.name}, backend {os.environ.get('KERAS_BACKEND', 'tf')}")
        print(f"{'batch':>6} {'(a) bare img/s':>15} {'(b) pipeline img/s':>19}")
        best_a = best_b = 0.0
        for batch in args.batches:
            at_batch = settings.model_copy(update={"inference_batch_size": batch})
            bare(predictor, batch, batch)  # compile this shape
            a, b = [], []
            for _ in range(args.repeat):
                a.append(bare(predictor, batch, args.n))
                b.append(batched(archive, predictor, at_batch))
            rate_a = (args.n // batch) * batch / statistics.median(a)
            rate_b = args.n / statistics.median(b)
            best_a, best_b = max(best_a, rate_a), max(best_b, rate_b)
            print(f"{batch:>6} {rate_a:>15.0f} {rate_b:>19.0f}")
        print(f"(c) pipeline best / bare best: {100 * best_b / best_a:.0f} % (goal >= 70 %)")
        print(f"INFERENCE_BATCH_SIZE=auto picks {batch_size(predictor, 'auto')} on this device")
    if not args.table_only:
        _the_other_tables()


def _the_other_tables() -> None:
    """bench.xla, then bench.paths (when TensorFlow is there for the worker)."""
    import importlib.util
    import subprocess
    import sys

    steps = [["bench.xla"]]
    if importlib.util.find_spec("tensorflow") is not None:
        steps.append(["bench.paths"])
    else:
        print("bench.paths skipped: the worker needs TensorFlow (Grad-CAM), absent here")
    for step in steps:
        print(f"\n=== python -m {' '.join(step)}", flush=True)
        subprocess.call([sys.executable, "-m", *step])


if __name__ == "__main__":
    main()
