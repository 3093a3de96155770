"""Models room: architectures, data loading with a grouped split, training, evaluation, registry.

Kept free of TensorFlow imports on purpose: the API imports ``models.registry`` and
``models.preprocessing`` and must never pay for (or depend on) TensorFlow.
"""
