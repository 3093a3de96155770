"""The one preprocessing function shared by training and serving (numpy + Pillow only).

Training and inference must feed the network the exact same tensor for the same
display image, so both call :func:`preprocess`. This module must never import
TensorFlow or Keras: the web API imports it through the registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class InputSpec:
    """The tensor shape a model expects for one slice: (height, width, channels)."""

    height: int
    width: int
    channels: int = 1

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (h, w, c) shape of one preprocessed slice, as Keras wants it."""
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, int]:
        """The card.json form (``{"height", "width", "channels"}``)."""
        return {"height": self.height, "width": self.width, "channels": self.channels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Read the card.json form; channels defaults to 1 (grayscale CT)."""
        return cls(int(data["height"]), int(data["width"]), int(data.get("channels", 1)))


def preprocess(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Turn one display image (uint8, H x W) into the float32 (h, w, c) tensor in [0, 1].

    Pillow bilinear resize on the uint8 image, then /255, then the gray channel is
    repeated when the model wants three channels (ImageNet-shaped architectures).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    pil = Image.fromarray(image)  # a 2-D uint8 array is mode "L"
    if pil.size != (spec.width, spec.height):
        pil = pil.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    arr = np.asarray(pil, dtype=np.float32) / np.float32(255.0)
    arr = arr[:, :, np.newaxis]
    if spec.channels == 3:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def preprocess_batch(images: Iterable[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Preprocess several display images into one (n, h, w, c) float32 batch."""
    arrays = [preprocess(img, spec) for img in images]
    if not arrays:
        return np.zeros((0, *spec.shape), dtype=np.float32)
    return np.stack(arrays).astype(np.float32, copy=False)
