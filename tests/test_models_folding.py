"""Batch-norm folded into the convolutions for inference (models/folding.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from models.architectures import build_model  # noqa: E402
from models.folding import _foldable, fold_batchnorm  # noqa: E402
from models.serving import with_features  # noqa: E402


def _trained_looking(model: keras.Model) -> keras.Model:
    """Give every batch-norm layer statistics far from the identity, as training would."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, n),  # gamma
                    rng.normal(0, 0.5, n),  # beta
                    rng.normal(0, 0.3, n),  # moving mean
                    rng.uniform(0.05, 3.0, n),  # moving variance
                ]
            )
    return model


def _batch(model: keras.Model, n: int = 6) -> np.ndarray:
    return np.random.default_rng(2).random((n, *model.input_shape[1:]), dtype=np.float32)


def _kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_cnn6_folds_every_batch_norm_and_keeps_its_outputs() -> None:
    model = _trained_looking(build_model("cnn6", (32, 32, 1), 3))
    folded = fold_batchnorm(model)
    assert "BatchNormalization" in _kinds(model)
    assert "BatchNormalization" not in _kinds(folded)
    assert all(layer.use_bias for layer in folded.layers if isinstance(layer, keras.layers.Conv2D))
    x = _batch(model)
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)
    # the OOD detector's feature outputs (pooled stages) come out the same too
    for a, b in zip(
        with_features(model).predict_on_batch(x),
        with_features(folded).predict_on_batch(x),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    # the saved model is untouched: training, metrics and Grad-CAM read it
    assert "BatchNormalization" in _kinds(model)


def test_a_conv_with_its_own_bias_folds_both() -> None:
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", bias_initializer="random_normal")(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = _trained_looking(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))
    folded = fold_batchnorm(model)
    assert "BatchNormalization" not in _kinds(folded)
    x = _batch(model)
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_batch_norm_that_cannot_be_folded_is_kept() -> None:
    """A conv output that also feeds a residual join, and a batch-norm after a dense layer."""
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    joined = keras.layers.Add()([keras.layers.BatchNormalization()(conv), conv])
    dense = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(joined))
    model = _trained_looking(keras.Model(inputs, keras.layers.BatchNormalization()(dense)))
    assert fold_batchnorm(model) is model


def test_a_conv_with_its_own_activation_is_not_folded() -> None:
    """Batch-norm after ``Conv2D(activation="relu")`` acts on the ReLU's output: not foldable."""
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = _trained_looking(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))
    # the rule itself, not only the output check (which a flat head can slip past)
    assert _foldable(model) == {}
    assert fold_batchnorm(model) is model


def test_a_conv_that_is_also_a_model_output_is_not_folded() -> None:
    inputs = keras.Input((8, 8, 2))
    conv = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization()(conv))
    model = _trained_looking(keras.Model(inputs, [pooled, conv]))
    assert _foldable(model) == {}
    assert fold_batchnorm(model) is model


def test_open_input_sizes_are_checked_at_the_cards_size() -> None:
    """A model declared for any input size is checked with the size it will be served at."""
    model = _trained_looking(build_model("cnn6", (None, None, 1), 3))
    folded = fold_batchnorm(model, (32, 32, 1))
    assert "BatchNormalization" not in _kinds(folded)
    x = np.random.default_rng(3).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_a_model_without_batch_norm_is_returned_as_it_is() -> None:
    model = build_model("cnn6plain", (32, 32, 1), 3)
    assert fold_batchnorm(model) is model


def test_a_failure_to_fold_serves_the_model_as_saved(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    import models.folding

    def broken(model: keras.Model) -> keras.Model:
        raise AttributeError("a layer not foreseen")

    monkeypatch.setattr(models.folding, "_fold", broken)
    model = build_model("cnn6", (32, 32, 1), 3)
    assert fold_batchnorm(model) is model
    assert "batch-norm not folded" in caplog.text
