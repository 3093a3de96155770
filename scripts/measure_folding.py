"""What the worker's serving changes (models/folding.py, models/onnx_runtime.py): answers
and speed, on the real slices.

    PYTHONPATH=$PWD .venv/bin/python scripts/measure_folding.py [--model NAME]

Loads the model as saved, the worker's ``Predictor`` on Keras (batch-norm
folded, with its OOD outputs and calibration) and the same on ONNX Runtime
(``SERVING_RUNTIME=onnx``), runs every IQ-OTH/NCCD slice of DATA_DIR (default
../shared/data) through each in batches of 16, and prints the largest
differences from the saved model in probabilities and OOD scores, how many
labels and OOD flags differ, then slices/s of each, alternating twice. About a
minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 16


def _run(predictor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Probabilities, OOD scores and OOD flags of every slice of ``x``."""
    outs = [predictor.predict(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    return (
        np.concatenate([o.probabilities for o in outs]),
        np.concatenate([o.ood_score for o in outs]),
        np.concatenate([o.out_of_distribution for o in outs]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lungct-cnn6")
    args = parser.parse_args()

    from bench.throughput import pick_slices
    from config import Settings
    from models.data import load_gray
    from models.preprocessing import preprocess
    from models.registry import Registry
    from models.serving import load_model, with_features
    from worker.inference import Predictor

    card = Registry(Settings().models_dirs).get(args.model)
    folded = Predictor.load(card, "keras")
    onnx = Predictor.load(card, "onnx")
    saved_model = load_model(card)
    if folded.ood is None:
        raise SystemExit(f"{args.model} has no OOD detector: this script compares its scores too")
    saved = Predictor(card, saved_model, with_features(saved_model), folded.ood, folded.temperature)
    files = pick_slices(10_000)
    x = np.stack([preprocess(load_gray(f), card.input) for f in files])
    a = _run(saved, x)
    for name, predictor in (("folded", folded), ("onnx", onnx)):
        b = _run(predictor, x)
        print(f"{len(files)} slices of {args.model}, saved vs {name}:")
        print(f"  probabilities: max |diff| {np.abs(a[0] - b[0]).max():.1e}, labels differ: "
              f"{int((a[0].argmax(1) != b[0].argmax(1)).sum())}")  # fmt: skip
        print(f"  OOD scores: max |diff| {np.abs(a[1] - b[1]).max():.1e}, flags differ: "
              f"{int((a[2] != b[2]).sum())} of {int(a[2].sum())} flagged")  # fmt: skip
    for _ in range(2):
        for name, predictor in (("saved", saved), ("folded", folded), ("onnx", onnx)):
            start = time.perf_counter()
            _run(predictor, x)
            print(f"  {name:<7} {len(x) / (time.perf_counter() - start):6.0f} slices/s")


if __name__ == "__main__":
    main()
