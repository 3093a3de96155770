"""Training CLI end to end on a tiny synthetic dataset, evaluation metrics, comparison table."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("keras")

from models.compare import render_table
from models.evaluate import classification_metrics, evaluate_saved
from models.registry import Registry
from models.serving import load_model
from models.train import ARCH_NAMES, class_weights, main, parse_args
from tests.test_models_data import make_dataset

CARD_KEYS = {
    "name",
    "version",
    "architecture",
    "classes",
    "input",
    "preprocessing",
    "severity",
    "file",
    "metrics",
    "data",
    "split",
    "training",
    "intended_use",
    "limitations",
}


def test_help_lists_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert all(arch in out for arch in ARCH_NAMES)


def test_class_weights_balance() -> None:
    weights = class_weights(np.array([0, 1, 1, 1]), 2)
    assert weights[0] == pytest.approx(2.0) and weights[1] == pytest.approx(2 / 3)


def test_train_cli_writes_a_servable_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, {"normal": [4] * 5, "benign": [4] * 5, "malignant": [4] * 5}, size=48)
    out = tmp_path / "models" / "tiny"
    main(
        [
            "--arch",
            "cnn6",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--img-size",
            "32",
            "--batch-size",
            "8",
            "--block-size",
            "4",
            "--verbose",
            "0",
        ]
    )
    for name in (
        "model.keras",
        "card.json",
        "card.md",
        "training_curves.png",
        "confusion_matrix.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "best.weights.h5").exists()
    card_json = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert set(card_json) >= CARD_KEYS
    assert card_json["input"] == {"height": 32, "width": 32, "channels": 1}
    assert card_json["severity"] == ["normal", "benign", "malignant"]
    assert {"accuracy", "macro_f1", "per_class", "roc_auc_ovr", "confusion_matrix"} <= set(
        card_json["metrics"]["test"]
    )
    files = card_json["split"]["files"]
    assert not set(files["train"]) & set(files["test"])
    card = Registry([tmp_path / "models"]).get("tiny")
    model = load_model(card)
    assert model.predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0).shape == (1, 3)
    rescored = evaluate_saved(out, data)
    assert rescored["accuracy"] == pytest.approx(card_json["metrics"]["test"]["accuracy"])


def test_classification_metrics_known_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["recall"] == 1.0 and m["per_class"]["b"]["precision"] == 2 / 3
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert set(m["roc_auc_ovr"]) == {"a", "b", "c", "macro"}


def test_comparison_table_states_budget_and_hardware() -> None:
    card = {
        "architecture": "lenet",
        "metrics": {
            "test": {"accuracy": 0.5, "macro_f1": 0.4, "roc_auc_ovr": {"macro": 0.7}},
            "val": {"macro_f1": 0.45},
        },
        "training": {
            "params": 1234,
            "train_seconds": 12.3,
            "epochs_run": 5,
            "best_epoch": 3,
            "device": "CPU (2 cores), no GPU",
        },
    }
    args = argparse.Namespace(
        seed=42,
        img_size=128,
        channels=1,
        epochs=25,
        patience=8,
        batch_size=32,
        lr=1e-3,
        min_epochs=5,
        no_class_weights=True,
    )
    table = render_table([card], args)
    assert "| lenet | 1,234 | 0.500 | 0.400 | 0.700 | 0.450 | 12 | 5 | 3 |" in table
    assert "no GPU" in table and "max 25 epochs" in table


@pytest.mark.realdata
def test_shipped_model_reproduces_its_card_metrics() -> None:
    """The committed default model, re-scored on its recorded test files, matches its card."""
    repo = Path(__file__).resolve().parent.parent
    model_dir = repo / "models" / "store" / "lungct-cnn6"
    data = Path(os.environ.get("DATA_DIR", repo.parent / "shared" / "data")) / "iqoth-nccd"
    if not data.is_dir() or not (model_dir / "card.json").is_file():
        pytest.skip("needs ../shared/data (DATA_DIR) and the trained default model")
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    rescored = evaluate_saved(model_dir, data)
    assert rescored["confusion_matrix"] == card["metrics"]["test"]["confusion_matrix"]
    assert rescored["macro_f1"] == pytest.approx(card["metrics"]["test"]["macro_f1"])
