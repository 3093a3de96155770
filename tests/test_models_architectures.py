"""Every architecture builds at a small size, predicts, trains a step and round-trips to disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from models.architectures import ARCHITECTURES, MIN_INPUT_SIZE, build_model  # noqa: E402
from models.registry import ModelCard  # noqa: E402
from models.serving import load_model  # noqa: E402
from models.train import ARCH_NAMES, THREE_CHANNEL  # noqa: E402


def _batch(shape: tuple[int, int, int], n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, *shape)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(n) % 3, 3)
    return x, y


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_builds_predicts_and_trains_one_step(arch: str) -> None:
    size = MIN_INPUT_SIZE[arch]
    shape = (size, size, 3 if arch in THREE_CHANNEL else 1)
    model = build_model(arch, shape, 3)
    x, y = _batch(shape)
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)


@pytest.mark.parametrize("arch", ["cnn6", "rescnn", "lenet"])
def test_any_channels_size_and_classes(arch: str) -> None:
    model = build_model(arch, (40, 36, 3), 5)
    assert model(np.zeros((1, 40, 36, 3), np.float32)).shape == (1, 5)


def test_cnn6_layout() -> None:
    model = build_model("cnn6", (128, 128, 1), 3)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(pools) == 6 and all(p.pool_size == (2, 2) for p in pools)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [64, 3]
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)


def test_cnn6plain_is_the_plain_recipe() -> None:
    model = build_model("cnn6plain", (64, 64, 1), 3)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 64, 64, 128, 128]


def test_efficientnet_sees_unit_range() -> None:
    """Our [0, 1] input is scaled to 0..255 for Keras' built-in Rescaling(1/255)."""
    model = build_model("efficientnetb0", (32, 32, 3), 3)
    assert model.get_layer("to_0_255").scale == 255.0


def test_registry_names_match_cli_choices() -> None:
    assert set(ARCH_NAMES) == set(ARCHITECTURES)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("transformer", (32, 32, 1), 3)


def test_saved_model_loads_through_registry_card(tmp_path: Path) -> None:
    model = build_model("cnn6", (32, 32, 1), 3)
    model.save(tmp_path / "model.keras")
    card = ModelCard.from_dict(
        {"name": "t", "classes": ["a", "b", "c"], "input": {"height": 32, "width": 32}},
        tmp_path,
    )
    loaded = load_model(card)
    x, _ = _batch((32, 32, 1), 2)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(FileNotFoundError):
        load_model(ModelCard.from_dict(card.raw | {"file": "nope.keras"}, tmp_path))
