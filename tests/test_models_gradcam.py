"""Grad-CAM heat maps (models/gradcam.py) and the worker's Predictor.explain."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from models.architectures import build_model  # noqa: E402
from models.gradcam import GradCam, last_conv_layer, overlay_png  # noqa: E402
from worker.images import heatmap_png  # noqa: E402


def test_heat_maps_have_input_size_and_follow_the_evidence() -> None:
    """A hand-made network whose class-1 score is the brightness of the top-left corner."""
    inputs = keras.Input((16, 16, 1))
    fmap = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="fmap")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(fmap)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[-1.0, 1.0]]))(
        pooled
    )
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    x = np.zeros((2, 16, 16, 1), np.float32)
    x[0, :4, :4] = 1.0
    x[1, -4:, -4:] = 1.0
    cam = GradCam(model, "fmap")
    cams = cam(x, class_index=[1, 1])
    assert cams.shape == (2, 16, 16) and cams.min() >= 0 and cams.max() == pytest.approx(1.0)
    assert np.allclose(cam(x), cams)  # no class given: the arg-max, class 1 here
    assert cams[0, :4, :4].mean() > cams[0, -4:, -4:].mean()
    assert cams[1, -4:, -4:].mean() > cams[1, :4, :4].mean()


def test_default_layer_is_the_last_map_of_at_least_8x8() -> None:
    model = build_model("cnn6", (128, 128, 1), 3)
    layer = last_conv_layer(model)
    assert tuple(layer.output.shape[1:3]) == (8, 8)
    cams = GradCam(model)(np.random.default_rng(0).random((3, 128, 128, 1)).astype(np.float32))
    assert cams.shape == (3, 128, 128) and np.isfinite(cams).all()


def test_pngs() -> None:
    cam = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    red = Image.open(io.BytesIO(heatmap_png(cam)))  # what the worker stores
    assert red.mode == "RGBA" and red.size == (8, 8)
    alpha = np.asarray(red)[..., 3]
    assert alpha[0, 0] == 0 and alpha[-1, -1] > 200  # opaque where the map is strong
    over = Image.open(io.BytesIO(overlay_png(np.full((20, 30), 50, np.uint8), cam)))
    px = np.asarray(over)
    assert over.size == (30, 20) and px[..., 0].max() > px[..., 1].max() == 50
