"""Cost of the out-of-distribution score and of Grad-CAM on the worker's prediction path.

Times, interleaved and repeated (medians), for a batch of random slices at the model's
input size: ``Predictor.predict`` without and with the OOD detector, the bare forward pass
with one output and with the feature outputs, the numpy scoring alone, and Grad-CAM
(``Predictor.explain``) for the 5 top slices of a series.

    .venv/bin/python bench/ood_cost.py [--model lungct-cnn6] [--batch 64] [--repeat 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _ms(values: list[float]) -> str:
    return f"{np.median(values) * 1000:.1f} ms"


def main() -> None:
    from models.registry import ModelCard
    from worker.inference import Predictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lungct-cnn6", help="a folder under models/store")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=25)
    args = p.parse_args()
    card = ModelCard.load(Path(__file__).resolve().parent.parent / "models/store" / args.model)
    with_ood = Predictor.load(card, "keras")  # Keras passes are what this compares
    if with_ood.ood is None:
        raise SystemExit(f"{args.model} has no OOD detector")
    plain = Predictor(card, with_ood.model, with_ood.model, None, with_ood.temperature)
    rng = np.random.default_rng(0)
    x = (rng.random((args.batch, *card.input.shape)) * 0.1).astype(np.float32)
    top = x[:5]
    for _ in range(3):
        plain.predict(x), with_ood.predict(x), with_ood.explain(top)
    times: dict[str, list[float]] = {k: [] for k in ("plain", "ood", "fwd1", "fwd_n", "np", "cam")}
    for _ in range(args.repeat):
        for key, call in (
            ("plain", lambda: plain.predict(x)),
            ("ood", lambda: with_ood.predict(x)),
            ("fwd1", lambda: with_ood.model.predict_on_batch(x)),
            ("fwd_n", lambda: with_ood.forward.predict_on_batch(x)),
            ("cam", lambda: with_ood.explain(top)),
        ):
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
        feats = [np.asarray(f) for f in with_ood.forward.predict_on_batch(x)[1:]]
        start = time.perf_counter()
        with_ood.ood.score(feats, x)
        times["np"].append(time.perf_counter() - start)
    n_out = len(with_ood.forward.outputs)
    print(f"{args.model}, batch {args.batch}, {args.repeat} repetitions, medians:")
    print(f"  Predictor.predict without OOD {_ms(times['plain'])}, with OOD {_ms(times['ood'])}")
    print(f"  bare forward: 1 output {_ms(times['fwd1'])}, {n_out} outputs {_ms(times['fwd_n'])}")
    print(f"  numpy OOD scoring alone {_ms(times['np'])}")
    print(f"  Grad-CAM for 5 slices {_ms(times['cam'])}")


if __name__ == "__main__":
    main()
