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
