"""Fit a trained model's out-of-distribution detector and its temperature, and record both.

    python -m models.uncertainty --model-dir models/store/lungct-cnn6 \\
        --data ../shared/data/iqoth-nccd

Reads the split recorded in the model card: the OOD detector (:mod:`models.ood`) is fitted
on the training files and thresholded on the validation files (at most 5 % flagged); the
temperature (:mod:`models.calibration`) is fitted on the validation files. The test files
are only scored, once, for the card. Writes ``ood.npz`` and ``reliability.png`` next to the
model and the ``ood`` and ``calibration`` sections into card.json/card.md. ``models.train``
calls :func:`fit_uncertainty` at the end of every run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration import (
    ECE_BINS,
    apply_temperature,
    fit_temperature,
    nll,
    plot_reliability,
    reliability,
)
from models.ood import (
    INPUT_MARGIN,
    INPUT_QUANTILES,
    OOD_FILE,
    STUDY_MIN_FRACTION,
    TARGET_RATE,
    OODDetector,
    group_flag_rate,
)

RELIABILITY_FILE = "reliability.png"


def predict_with_features(model: Any, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(probabilities, feature arrays per layer) in one pass, batch 64."""
    from models.serving import with_features

    probs, *feats = with_features(model).predict(x, verbose=0, batch_size=64)
    return np.asarray(probs), [np.asarray(f) for f in feats]


def fit_uncertainty(
    model: Any,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    out: Path,
    val_groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit OOD + temperature from ``arrays[split] = (x, y)``; returns the two card sections."""
    from models.serving import feature_layer

    out_p: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {
        s: predict_with_features(model, x) for s, (x, _) in arrays.items()
    }
    x_tr, y_tr = arrays["train"]
    detector = OODDetector.fit(out_p["train"][1], y_tr, x_tr)
    val_check = detector.set_threshold(out_p["val"][1], arrays["val"][0])
    detector.save(out / OOD_FILE)
    rates = {}
    for s, (x, _) in arrays.items():
        _, flags = detector.score(out_p[s][1], x)
        rates[s] = round(float(flags.mean()), 4)
    ood: dict[str, Any] = {
        "method": "Mahalanobis distance to the nearest class mean (shared Ledoit-Wolf "
        "covariance, fitted on the training split) of each conv stage's globally averaged "
        "output and of the penultimate features, each divided by its training median and "
        "averaged over layers (the ood_score; about 1 for a typical training slice), plus "
        "input checks "
        f"(mean intensity and black-pixel fraction inside the training split's "
        f"{INPUT_QUANTILES[0]:.1%}-{INPUT_QUANTILES[1]:.1%} range widened by "
        f"{INPUT_MARGIN:.0%}); threshold: lowest value flagging at most "
        f"{TARGET_RATE:.0%} of validation slices",
        "file": OOD_FILE,
        "feature_layer": feature_layer(model).name,
        "feature_vectors": len(detector.layers),
        "threshold": round(detector.threshold, 4),
        "target_rate": TARGET_RATE,
        "validation": val_check,
        "flag_rate": rates,
        "input_checks": {
            "mean_intensity": [float(detector.input_low[0]), float(detector.input_high[0])],
            "black_fraction": [float(detector.input_low[1]), float(detector.input_high[1])],
        },
        "study_rule": {
            "min_fraction": STUDY_MIN_FRACTION,
            "text": f"a series is out of distribution when >= {STUDY_MIN_FRACTION:.0%} of its "
            "readable slices are flagged; a study when its whole set of slices is, or when "
            "any of its series is",
        },
    }
    if val_groups is not None:
        _, val_flags = detector.score(out_p["val"][1], arrays["val"][0])
        ood["study_rule"]["validation_groups"] = group_flag_rate(
            val_flags, val_groups, STUDY_MIN_FRACTION
        )
    probs_val, y_val = out_p["val"][0], arrays["val"][1]
    temperature = fit_temperature(probs_val, y_val)
    curves: dict[str, dict[str, Any]] = {}
    ece: dict[str, dict[str, float]] = {}
    nlls: dict[str, dict[str, float]] = {}
    for s in ("val", "test"):
        if s not in arrays:
            continue
        p, y = out_p[s][0], arrays[s][1]
        cal = apply_temperature(p, temperature)
        before, after = reliability(p, y), reliability(cal, y)
        curves[f"{s}, raw"], curves[f"{s}, calibrated"] = before, after
        ece[s] = {"before": round(before["ece"], 4), "after": round(after["ece"], 4)}
        nlls[s] = {"before": round(nll(p, y), 4), "after": round(nll(cal, y), 4)}
    plot_reliability(curves, out / RELIABILITY_FILE, "Reliability (top-class confidence)")
    calibration = {
        "method": "temperature scaling of log-probabilities, fitted on the validation split "
        "(minimum NLL); served probabilities are the calibrated ones",
        "temperature": round(temperature, 4),
        "ece_bins": ECE_BINS,
        "ece": ece,
        "nll": nlls,
        "figure": RELIABILITY_FILE,
    }
    return {"ood": ood, "calibration": calibration}


def _arrays_from_card(card_raw: dict[str, Any], classes: list[str], data: Path, spec: Any) -> Any:
    from models.data import load_gray
    from models.preprocessing import preprocess_batch

    out = {}
    for s, files in card_raw["split"]["files"].items():
        x = preprocess_batch((load_gray(data / f) for f in files), spec)
        y = np.array([classes.index(f.split("/")[0]) for f in files])
        out[s] = (x, y)
    return out


def _val_groups(card_raw: dict[str, Any], data: Path) -> np.ndarray | None:
    """The validation files' groups, rebuilt with the split parameters in the card."""
    from models.data import grouped_split, scan_folder

    params = card_raw["split"]["params"]
    dataset = scan_folder(data)
    split = grouped_split(
        dataset,
        tuple(params["fractions"]),
        params["seed"],
        params["block_size"],
        params["dup_distance"],
    )
    val_files = [dataset.rel(int(i)) for i in split.indices["val"]]
    if val_files != card_raw["split"]["files"]["val"]:
        return None  # the data changed since training: skip the group-level figure
    return split.groups[split.indices["val"]]


def update_model_dir(model_dir: Path, data: Path) -> dict[str, Any]:
    """Fit both on the card's recorded split and rewrite card.json/card.md."""
    from models import cards
    from models.registry import ModelCard
    from models.serving import load_model

    card = ModelCard.load(model_dir)
    arrays = _arrays_from_card(card.raw, card.classes, data, card.input)
    sections = fit_uncertainty(load_model(card), arrays, model_dir, _val_groups(card.raw, data))
    raw = card.raw | sections
    cards.write_card(raw, model_dir)
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: fit, write, print the two card sections."""
    p = argparse.ArgumentParser(prog="python -m models.uncertainty", description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset root used in training")
    args = p.parse_args(argv)
    print(json.dumps(update_model_dir(args.model_dir, args.data), indent=1))


if __name__ == "__main__":
    main()
