"""Build and save a small untrained Keras model with a card (test plumbing only).

Run as a script so TensorFlow is imported in a child process, never in the
test process: ``python tests/make_tiny_model.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.save(out / "model.keras")
    card = {
        "name": "tiny-test",
        "version": "0.0.1",
        "architecture": "tiny",
        "classes": ["benign", "malignant", "normal"],
        "severity": ["normal", "benign", "malignant"],
        "input": {"height": 32, "width": 32, "channels": 1},
        "file": "model.keras",
        "metrics": {"split": "untrained test model", "test": {}},
        "intended_use": "tests only",
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
