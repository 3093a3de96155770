"""Grad-CAM heat maps: which part of a slice drove the predicted class (Selvaraju et al., 2017).

For the last convolutional feature map A (h x w x k) and the class score y_c, the weights
are the spatially averaged gradients alpha_k = mean(dy_c / dA_k) and the map is
ReLU(sum_k alpha_k A_k), upsampled bilinearly to the input size and scaled to [0, 1] per
slice. It needs one forward and one backward pass per batch, so the worker computes it
only for a few top slices per series (``SUMMARY_TOP_SLICES``), after prediction.
TensorFlow is imported inside the functions (this module is for the worker and tools).

The heat map shows where the gradient of the class score is large; it is an aid for
looking at the slice, not a segmentation or a localisation that has been validated.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def last_conv_layer(model: Any, min_size: int = 8) -> Any:
    """The last layer with a 4-D (batch, h, w, channels) output at least ``min_size`` wide.

    The very last map of our networks is 2x2 or 4x4 at 128 px, too coarse to point at a
    nodule; the last one of at least 8x8 is still late (semantic) but localises. Falls
    back to the last 4-D layer of any size.
    """
    maps = [
        layer for layer in model.layers[1:] if len(getattr(layer, "output", np.empty(0)).shape) == 4
    ]
    if not maps:
        raise ValueError(f"model {model.name!r} has no 4-D feature map for Grad-CAM")
    wide = [m for m in maps if min(m.output.shape[1] or 0, m.output.shape[2] or 0) >= min_size]
    return (wide or maps)[-1]


class GradCam:
    """A reusable Grad-CAM for one model (build once per model, call per batch).

    The forward and backward pass run as one traced TensorFlow function: eager
    GradientTape dispatch cost about 0.3 s per call on a CPU, most of a small
    study's time; traced, a batch of top slices takes milliseconds. The
    function is traced again only for a new batch size (``reduce_retracing``).
    """

    def __init__(self, model: Any, layer_name: str | None = None) -> None:
        import keras
        import tensorflow as tf

        layer = model.get_layer(layer_name) if layer_name else last_conv_layer(model)
        self.layer_name = layer.name
        self._model = keras.Model(model.inputs, [layer.output, model.outputs[0]])
        # autograph off: no Python control flow to convert, and no generated source
        # files left in the temporary folder
        self._cams = tf.function(self._cams_eager, reduce_retracing=True, autograph=False)

    def _cams_eager(self, x: Any, idx: Any) -> Any:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            fmap, probs = self._model(x, training=False)
            tape.watch(fmap)
            idx = tf.where(idx < 0, tf.argmax(probs, axis=1, output_type=tf.int32), idx)
            score = tf.gather(probs, idx, axis=1, batch_dims=1)
        grads = tape.gradient(score, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1, keepdims=True))
        return tf.image.resize(cam, tf.shape(x)[1:3], method="bilinear")[..., 0]

    def __call__(self, batch: np.ndarray, class_index: Sequence[int] | None = None) -> np.ndarray:
        """Heat maps (n, H, W) in [0, 1] for ``class_index`` per slice (default: arg-max)."""
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))
        wanted = [-1] * len(batch) if class_index is None else list(class_index)
        cam = self._cams(x, tf.constant(wanted, dtype=tf.int32)).numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1)
        return (cam / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.6) -> bytes:
    """The display slice (uint8, any size) with the heat map in red on top, as PNG."""
    from PIL import Image

    h, w = image.shape
    heat = np.asarray(
        Image.fromarray(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR
        ),
        dtype=np.float32,
    )
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    rgb[..., 0] += alpha * heat  # the slice stays as it is; hot areas turn red
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()
