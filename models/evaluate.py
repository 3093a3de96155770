"""Test-split metrics and the figures of a model card (sklearn + matplotlib Agg).

Only ever called on the held-out test split once training and model selection (on the
validation split) are finished; nothing here feeds back into training. Also usable as
``python -m models.evaluate --model-dir models/store/lungct-cnn6 --data DIR`` to
re-score a trained model on the test files recorded in its card.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class P/R/F1, macro-F1, one-vs-rest ROC-AUC and the confusion matrix."""
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        c: {
            "precision": float(prec[k]),
            "recall": float(rec[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, c in enumerate(classes)
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "per_class": per_class,
        "roc_auc_ovr": _roc_auc_ovr(y_true, probs, classes),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": len(y_true),
    }


def _roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """One-vs-rest AUC per class plus their macro mean; None where a class is absent."""
    out: dict[str, Any] = {}
    for k, c in enumerate(classes):
        positives = y_true == k
        out[c] = (
            float(roc_auc_score(positives, probs[:, k]))
            if 0 < positives.sum() < len(y_true)
            else None
        )
    present = [v for v in out.values() if v is not None]
    out["macro"] = float(np.mean(present)) if present else None
    return out


def macro_f1(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """Macro-F1 of argmax predictions (the validation model-selection score)."""
    return float(
        f1_score(
            y_true,
            probs.argmax(axis=1),
            labels=list(range(num_classes)),
            average="macro",
            zero_division=0,
        )
    )


def plot_confusion(
    cm: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: Path,
    title: str = "Confusion matrix (test split)",
) -> None:
    """Save a labelled confusion-matrix heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            color = "white" if arr[i, j] > arr.max() / 2 else "black"
            ax.text(j, i, str(arr[i, j]), ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: Mapping[str, Sequence[float]], path: Path, best_epoch: int) -> None:
    """Save loss, accuracy and validation macro-F1 per epoch, marking the selected epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("macro-F1", "macro_f1")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (title, key) in zip(axes, panels, strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, label=(prefix or "train_").rstrip("_"))
        ax.axvline(best_epoch, color="grey", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_saved(model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Re-score a saved model on the test files listed in its card."""
    from models.calibration import apply_temperature
    from models.data import load_gray
    from models.preprocessing import preprocess_batch
    from models.registry import ModelCard
    from models.serving import load_model

    card = ModelCard.load(model_dir)
    files = card.raw["split"]["files"]["test"]
    if any("#" in f for f in files):
        raise ValueError("a model trained on studies is scored during training (see its card)")
    y_true = np.array([card.classes.index(f.split("/")[0]) for f in files])
    x = preprocess_batch((load_gray(data_dir / f) for f in files), card.input)
    probs = load_model(card).predict(x, verbose=0)
    temperature = (card.raw.get("calibration") or {}).get("temperature", 1.0)
    probs = apply_temperature(probs, float(temperature))  # what the service returns
    return classification_metrics(y_true, probs, card.classes)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: print the test metrics of a saved model as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset root used in training")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_saved(args.model_dir, args.data), indent=2))


if __name__ == "__main__":
    main()
