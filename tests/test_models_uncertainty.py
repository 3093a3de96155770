"""Fitting OOD + temperature on a trained network, and the worker's one-pass Predictor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from models import cards  # noqa: E402
from models.architectures import build_model  # noqa: E402
from models.registry import ModelCard  # noqa: E402
from models.serving import feature_layer, with_features  # noqa: E402
from models.uncertainty import fit_uncertainty  # noqa: E402
from worker.inference import Predictor  # noqa: E402

SIZE = 32


def _slices(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """Dark slices with a disc whose brightness depends on the class."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - 16) ** 2 + (xx - 16) ** 2 < 100).astype(np.float32)
    x = disc[None] * (0.3 + 0.2 * y[:, None, None]) + rng.uniform(0, 0.03, (len(y), SIZE, SIZE))
    return x.astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A cnn6 fitted for two epochs, saved with a card and its uncertainty sections."""
    out = tmp_path_factory.mktemp("m") / "m"
    out.mkdir()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("cnn6", (SIZE, SIZE, 1), 3)
    model.compile("adam", "sparse_categorical_crossentropy")
    arrays = {}
    for split, n in (("train", 90), ("val", 60), ("test", 30)):
        y = rng.integers(0, 3, n)
        arrays[split] = (_slices(rng, y), y)
    model.fit(*arrays["train"], epochs=2, verbose=0)
    model.save(out / "model.keras")
    sections = fit_uncertainty(model, arrays, out, val_groups=np.arange(60) // 10)
    card = {
        "name": "m",
        "version": "1",
        "classes": ["benign", "malignant", "normal"],
        "severity": ["normal", "benign", "malignant"],
        "input": {"height": SIZE, "width": SIZE, "channels": 1},
        "file": "model.keras",
        **sections,
    }
    (out / "card.json").write_text(json.dumps(card))
    return out, sections


def test_feature_outputs_share_one_forward_pass() -> None:
    model = build_model("cnn6", (SIZE, SIZE, 1), 3)
    two = with_features(model)
    assert len(two.outputs) == 1 + 6 + 1  # probabilities, six pooled stages, penultimate
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype(np.float32)
    probs, *feats = two.predict_on_batch(x)
    np.testing.assert_allclose(probs, model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert feats[-1].shape == (2, 64) and feature_layer(model).name == "predictions"
    seq = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
            keras.layers.Softmax(),
        ]
    )
    assert feature_layer(seq) is seq.layers[-2]
    assert [tuple(o.shape) for o in with_features(seq).outputs] == [(None, 3), (None, 64)]


def test_fit_writes_detector_threshold_and_calibration(trained: tuple[Path, dict]) -> None:
    out, sections = trained
    ood, cal = sections["ood"], sections["calibration"]
    assert (out / "ood.npz").is_file() and (out / "reliability.png").is_file()
    assert ood["validation"]["flag_rate"] <= 0.05 and ood["validation"]["n"] == 60
    assert ood["feature_vectors"] == 7 and ood["study_rule"]["min_fraction"] == 0.25
    assert ood["study_rule"]["validation_groups"]["groups"] == 6
    assert cal["temperature"] > 0 and set(cal["ece"]) == {"val", "test"}
    md = cards._ood_lines(ood) + cards._calibration_lines(cal)
    assert any("Threshold" in line for line in md) and any("reliability" in line for line in md)


def test_predictor_gives_calibrated_probabilities_and_ood_in_one_pass(
    trained: tuple[Path, dict],
) -> None:
    out, sections = trained
    predictor = Predictor.load(ModelCard.load(out))
    assert predictor.ood is not None
    assert predictor.temperature == pytest.approx(sections["calibration"]["temperature"])
    rng = np.random.default_rng(5)
    batch = np.concatenate(
        [_slices(rng, np.array([0, 1, 2])), np.ones((1, SIZE, SIZE, 1), np.float32)]
    )
    result = predictor.predict(batch)
    assert result.probabilities.shape == (4, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert result.ood_score is not None and result.out_of_distribution is not None
    assert result.ood_score.shape == (4,) and bool(result.out_of_distribution[3])  # all white


def test_predictor_without_detector_has_no_ood(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    raw = json.loads((out / "card.json").read_text())
    del raw["ood"], raw["calibration"]
    predictor = Predictor.load(ModelCard.from_dict(raw, out))
    result = predictor.predict(np.zeros((2, SIZE, SIZE, 1), np.float32))
    assert result.ood_score is None and result.out_of_distribution is None
    assert predictor.temperature == 1.0


def test_predictor_explains_top_slices_with_grad_cam(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    predictor = Predictor.load(ModelCard.load(out))
    batch = _slices(np.random.default_rng(6), np.array([0, 2]))
    cams = predictor.explain(batch, [0, 2])
    assert cams.shape == (2, SIZE, SIZE) and float(cams.max()) <= 1.0
    assert predictor.explain(batch).shape == (2, SIZE, SIZE)  # arg-max class, cached model
