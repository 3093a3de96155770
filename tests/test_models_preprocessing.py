"""Preprocessing: one function, identical tensors for training and serving, TF-free."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import load_arrays, scan_folder
from models.preprocessing import InputSpec, preprocess, preprocess_batch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ct_like(h: int = 70, w: int = 90, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def test_preprocess_shape_dtype_range() -> None:
    out = preprocess(_ct_like(), InputSpec(32, 48, 1))
    assert out.shape == (32, 48, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_preprocess_is_pillow_bilinear_over_255() -> None:
    img = _ct_like()
    expected = (
        np.asarray(
            Image.fromarray(img).resize((40, 30), Image.Resampling.BILINEAR), dtype=np.float32
        )
        / 255.0
    )
    np.testing.assert_array_equal(preprocess(img, InputSpec(30, 40, 1))[:, :, 0], expected)


def test_three_channels_repeat_gray() -> None:
    out = preprocess(_ct_like(), InputSpec(16, 16, 3))
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_same_size_is_not_resampled() -> None:
    img = _ct_like(16, 16)
    expected = img.astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(preprocess(img, InputSpec(16, 16))[:, :, 0], expected)


def test_batch_and_empty_batch() -> None:
    spec = InputSpec(8, 8, 1)
    assert preprocess_batch([_ct_like(), _ct_like(seed=1)], spec).shape == (2, 8, 8, 1)
    assert preprocess_batch([], spec).shape == (0, 8, 8, 1)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32)])
def test_rejects_non_display_images(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        preprocess(bad, InputSpec(4, 4))


def test_input_spec_validation_and_roundtrip() -> None:
    spec = InputSpec(128, 96, 3)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert InputSpec.from_dict({"height": 5, "width": 6}).channels == 1
    with pytest.raises(ValueError):
        InputSpec(8, 8, 2)


def test_training_loader_equals_serving_path(tmp_path: Path) -> None:
    """The training loader and an upload decoded the serving way give identical tensors."""
    spec = InputSpec(32, 32, 1)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            rgb = np.random.default_rng(i).integers(0, 256, (50, 60, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(tmp_path / cls / f"{cls}_{i}.jpg", quality=90)
    dataset = scan_folder(tmp_path)
    trained_on = load_arrays(dataset, spec)
    # Serving: upload bytes -> Pillow -> mode L uint8 (display-image contract) -> preprocess.
    served = []
    for path in dataset.paths:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            served.append(np.asarray(img.convert("L"), dtype=np.uint8))
    np.testing.assert_array_equal(preprocess_batch(served, spec), trained_on)


def test_api_side_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys, models, models.preprocessing, models.registry, models.serving, "
        "models.ood, models.calibration, models.studies, worker.summary; "
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
