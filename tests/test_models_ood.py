"""Out-of-distribution detector and temperature scaling (numpy only, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.calibration import (
    apply_temperature,
    fit_temperature,
    nll,
    plot_reliability,
    reliability,
)
from models.ood import OODDetector, group_flag_rate, input_stats


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    """CT-like preprocessed slices: mostly black with a brighter disc."""
    yy, xx = np.mgrid[:16, :16]
    disc = ((yy - 8) ** 2 + (xx - 8) ** 2 < 16).astype(np.float32) * 0.6
    noise = rng.uniform(0, 0.05, (n, 16, 16)).astype(np.float32)
    return (disc + noise * disc)[..., None]


def _features(rng: np.random.Generator, y: np.ndarray, shift: float = 0.0) -> list[np.ndarray]:
    centres = np.array([[0.0] * 8, [3.0] * 8, [-3.0] * 8])
    a = centres[y] + rng.normal(size=(len(y), 8)) + shift
    b = rng.normal(size=(len(y), 4)) + shift
    return [b, a]


def _fitted(rng: np.random.Generator) -> tuple[OODDetector, dict[str, float]]:
    y_tr, y_val = rng.integers(0, 3, 300), rng.integers(0, 3, 120)
    det = OODDetector.fit(_features(rng, y_tr), y_tr, _images(rng, 300))
    check = det.set_threshold(_features(rng, y_val), _images(rng, 120))
    return det, check


def test_threshold_flags_at_most_five_percent_of_validation() -> None:
    det, check = _fitted(np.random.default_rng(0))
    assert check["flag_rate"] <= 0.05 and check["n"] == 120
    assert check["flagged"] == 6  # floor(0.05 * 120): the lowest threshold that keeps it
    assert det.threshold == check["threshold"]


def test_shifted_features_and_odd_images_are_flagged() -> None:
    rng = np.random.default_rng(1)
    det, _ = _fitted(rng)
    y = rng.integers(0, 3, 50)
    scores_in, flags_in = det.score(_features(rng, y), _images(rng, 50))
    scores_out, flags_out = det.score(_features(rng, y, shift=4.0), _images(rng, 50))
    assert scores_out.min() > scores_in.max()
    assert flags_out.all() and flags_in.mean() < 0.2
    blank, white = np.zeros((1, 16, 16, 1), np.float32), np.ones((1, 16, 16, 1), np.float32)
    assert det.input_flags(np.concatenate([blank, white])).all()
    assert not det.input_flags(_images(rng, 5)).any()


def test_detector_round_trips_through_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    det, _ = _fitted(rng)
    det.save(tmp_path / "ood.npz")
    again = OODDetector.load(tmp_path / "ood.npz")
    feats, imgs = _features(rng, np.zeros(4, int)), _images(rng, 4)
    np.testing.assert_allclose(again.score(feats, imgs)[0], det.score(feats, imgs)[0])
    assert again.threshold == det.threshold and len(again.layers) == 2
    with pytest.raises(ValueError, match="feature arrays"):
        again.feature_scores(feats[:1])


def test_input_stats_and_group_rate() -> None:
    batch = np.zeros((2, 4, 4, 1), np.float32)
    batch[1] = 1.0
    np.testing.assert_allclose(input_stats(batch), [[0.0, 1.0], [1.0, 0.0]])
    flags = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert group_flag_rate(flags, groups, 0.25) == {
        "groups": 2,
        "groups_flagged": 1,
        "max_group_fraction": 0.5,
    }


def test_temperature_keeps_labels_and_fixes_overconfidence(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    right = rng.random(400) < 0.7  # 70 % correct, but always 99 % sure
    pred = np.where(right, y, (y + 1) % 3)
    probs = np.full((400, 3), 0.005)
    probs[np.arange(400), pred] = 0.99
    assert np.array_equal(apply_temperature(probs, 1.0), probs.astype(np.float32))
    t = fit_temperature(probs, y)
    cal = apply_temperature(probs, t)
    assert t > 1.5
    assert np.array_equal(cal.argmax(axis=1), probs.argmax(axis=1))
    np.testing.assert_allclose(cal.sum(axis=1), 1.0, rtol=1e-5)
    assert nll(cal, y) < nll(probs, y)
    before, after = reliability(probs, y), reliability(cal, y)
    assert before["ece"] == pytest.approx(0.29, abs=0.06) and after["ece"] < 0.1
    assert sum(b["n"] for b in after["bins"]) == 400
    plot_reliability({"raw": before, "calibrated": after}, tmp_path / "r.png", "test")
    assert (tmp_path / "r.png").stat().st_size > 1000
