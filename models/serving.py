"""Loading a trained model for inference; the only place the worker touches Keras for models.

Keras is imported inside the function so that importing this module (for type hints,
or from the API by mistake) never loads TensorFlow.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.registry import ModelCard


def load_model(card: ModelCard) -> Any:
    """Load ``card.model_file`` without its optimizer state (inference only, compile=False)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    path = card.model_file
    if not path.is_file():
        raise FileNotFoundError(f"model file for {card.name!r} not found: {path}")
    return keras.models.load_model(path, compile=False)


def feature_layer(model: Any) -> Any:
    """The layer whose input is the penultimate feature vector (the softmax layer).

    That is the last layer, unless the model ends in a separate ``Activation``/``Softmax``
    layer (common in imported models): then the layer before it.
    """
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation | keras.layers.Softmax) and len(model.layers) > 1:
        last = model.layers[-2]
    return last


def feature_tensors(model: Any) -> list[Any]:
    """The feature vectors the OOD detector reads: pooled conv stages, then the penultimate.

    Every 2-D pooling layer's output (the end of a conv stage in our builders) is reduced
    to one value per channel by global average pooling: early stages describe texture,
    noise and contrast, which change with scanner and reconstruction; the penultimate
    vector describes what the classifier saw. Models without pooling layers (or with
    nested backbones) give the penultimate vector only.
    """
    import keras

    pools = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    stages = [
        keras.layers.GlobalAveragePooling2D(name=f"ood_gap_{i}")(layer.output)
        for i, layer in enumerate(layer for layer in model.layers if isinstance(layer, pools))
    ]
    penultimate = feature_layer(model).input
    if isinstance(penultimate, list | tuple):
        raise ValueError("the model's last layer has several inputs; no single feature vector")
    return [*stages, penultimate]


def with_features(model: Any) -> Any:
    """A Keras model whose outputs are (probabilities, *feature vectors), sharing weights.

    One forward pass gives both, so the out-of-distribution score costs no second pass.
    """
    import keras

    return keras.Model(
        model.inputs, [model.outputs[0], *feature_tensors(model)], name=f"{model.name}_features"
    )
