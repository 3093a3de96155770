"""One forward pass on every core, or several passes side by side (``FORWARD_LANES``).

Usage: ``python -m bench.lanes [--slices 1000] [--rounds 3] [--lanes auto]``

Loads the default model twice on ONNX Runtime, as a worker would: once with one
lane (one pass at a time, split over every core) and once with ``--lanes``
(several one-thread passes at once). For each, alternating, it times:

* the bare forward pass over decoded slices (batches of INFERENCE_BATCH_SIZE);
* a study's pipeline in one process: the slices' JPEG bytes decoded and
  preprocessed on DECODE_THREADS threads, at most one batch per lane ahead, while
  the passes run, as the worker does (worker/runner.py).

It prints slices/s (medians) and the ratio of the lanes to one pass. The
difference is in the second line: with decode threads on the same cores, a pass
split over every core waits for its slowest part whenever a decode thread holds
a core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from bench.throughput import pick_slices
from config import get_settings
from ingest.images import decode_image
from models.preprocessing import InputSpec, preprocess
from models.registry import Registry
from worker.inference import Predictor, batch_size

MAX_PIXELS = 50_000_000


def bare_seconds(predictor: Predictor, chunks: list[np.ndarray]) -> float:
    """Seconds for the passes alone over already decoded batches, ``predictor.lanes``
    at once as the worker runs them (bench.paths times its bare pass with this too)."""
    with ThreadPoolExecutor(max_workers=predictor.lanes) as lanes:
        start = time.perf_counter()
        for _ in lanes.map(predictor.predict, chunks):
            pass
        return time.perf_counter() - start


def bare(predictor: Predictor, tensors: np.ndarray, size: int) -> float:
    """Slices/s of the passes alone over already decoded tensors."""
    chunks = [tensors[i : i + size] for i in range(0, len(tensors), size)]
    return len(tensors) / bare_seconds(predictor, chunks)


def model_input(blob: bytes, spec: InputSpec) -> np.ndarray:
    """One slice's JPEG or PNG bytes as the model's input: decoded and preprocessed,
    the least any pipeline does before the model (bench.paths times it too)."""
    return preprocess(decode_image(blob, MAX_PIXELS), spec)


def pipeline(predictor: Predictor, blobs: list[bytes], size: int, threads: int) -> float:
    """Slices/s of decode + preprocess on ``threads`` threads beside the passes."""
    spec = predictor.card.input

    def load(blob: bytes) -> np.ndarray:
        return model_input(blob, spec)

    window = (predictor.lanes + 1) * size
    start = time.perf_counter()
    with (
        ThreadPoolExecutor(max_workers=threads) as decode,
        ThreadPoolExecutor(max_workers=predictor.lanes) as lanes,
    ):
        loading: deque[Future[np.ndarray]] = deque(decode.submit(load, b) for b in blobs[:window])
        rest = iter(blobs[window:])
        passes: deque[Future[object]] = deque()
        batch: list[np.ndarray] = []
        while loading:
            batch.append(loading.popleft().result())
            if (blob := next(rest, None)) is not None:
                loading.append(decode.submit(load, blob))
            if len(batch) == size or not loading:
                passes.append(lanes.submit(predictor.predict, np.stack(batch)))
                batch = []
                while len(passes) > predictor.lanes:
                    passes.popleft().result()
        for done in passes:
            done.result()
    return len(blobs) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lanes", default="auto", help="FORWARD_LANES to compare with 1")
    args = parser.parse_args(argv)
    settings = get_settings()
    card = Registry(settings.models_dirs).get(settings.default_model)
    one = Predictor.load(card, "onnx", 1)
    many = Predictor.load(card, "onnx", args.lanes)
    if one.run is None or many.run is None:
        raise SystemExit("ONNX Runtime did not load the model (see the warning above)")
    size = batch_size(one, settings.inference_batch_size)
    files = pick_slices(args.slices)
    blobs = [f.read_bytes() for f in files]
    tensors = np.stack([preprocess(decode_image(b, MAX_PIXELS), card.input) for b in blobs])
    threads = settings.decode_threads
    runs: dict[str, Callable[[Predictor], float]] = {
        "bare forward pass": lambda p: bare(p, tensors, size),
        f"decode ({threads} threads) + forward": lambda p: pipeline(p, blobs, size, threads),
    }
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            for predictor in (one, many):
                run(predictor)  # warm
                rates.setdefault((name, predictor.lanes), []).append(run(predictor))
    print(
        f"{len(blobs)} slices, batches of {size}, {os.cpu_count()} CPUs, "
        f"medians of {args.rounds} rounds (slices/s)"
    )
    print(f"{'':36s} {'1 lane':>8s} {f'{many.lanes} lanes':>9s}  ratio")
    for name in runs:
        a = statistics.median(rates[name, one.lanes])
        b = statistics.median(rates[name, many.lanes])
        print(f"{name:36s} {a:8.1f} {b:9.1f}  x{b / a:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
