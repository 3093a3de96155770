"""Network builders selectable by name, for any input size, channel count and class count.

Every builder takes the preprocessed tensor from :mod:`models.preprocessing` (float32 in
[0, 1]) and ends with a softmax over ``num_classes``. Keras is imported here (this module
is for training and the worker, never the API). ImageNet-style ``keras.applications``
networks are built with ``weights=None``: nothing is downloaded, they train from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
from keras import layers

Shape = tuple[int, int, int]
Builder = Callable[[Shape, int], keras.Model]


def _bn() -> layers.BatchNormalization:
    """Batch-norm with momentum 0.9 instead of Keras' 0.99.

    With a few hundred images an epoch is ~20 steps; at 0.99 the moving statistics are
    still dominated by their initial values (variance 1) after 15 epochs, while these
    mostly-black CT slices give first-layer activations of tiny variance, so inference
    mode predicted one class for everything. 0.9 tracks the data within a couple of epochs.
    """
    return layers.BatchNormalization(momentum=0.9)


def _classifier_head(x: keras.KerasTensor, num_classes: int, dropout: float) -> keras.KerasTensor:
    """Dropout then a softmax layer kept in float32 so probabilities are well calibrated."""
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def build_lenet(input_shape: Shape, num_classes: int) -> keras.Model:
    """LeNet-5 (LeCun 1998): two 5x5 conv + pooling stages, dense 120 and 84.

    ``same`` padding (instead of the original ``valid``) lets it accept inputs as small
    as 4x4 and keeps 128x128 inputs usable; ReLU replaces tanh, as usual today.
    """
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(6, 5, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Conv2D(16, 5, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(120, activation="relu")(x)
    x = layers.Dense(84, activation="relu")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, 0.0), name="lenet")


def build_alexnet(input_shape: Shape, num_classes: int) -> keras.Model:
    """AlexNet (Krizhevsky 2012) with the original filters; batch-norm replaces LRN.

    The 11x11 stride-4 stem and three overlapping 3x3/2 poolings are kept; ``same``
    padding lets inputs down to 32x32 work. The two dense layers are 4096 wide as in
    the paper, which makes it by far the largest model here (most parameters in dense).
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for filters, kernel, stride, pool in ((96, 11, 4, True), (256, 5, 1, True)):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = _bn()(x)
        x = layers.ReLU()(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for filters in (384, 384, 256):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(4096, activation="relu")(x)
        x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, 0.0), name="alexnet")


def build_cnn6(input_shape: Shape, num_classes: int) -> keras.Model:
    """Six 3x3 conv layers (32, 64, 64, 64, 128, 128), each followed by 2x2 max-pooling,
    a 64-unit dense layer, dropout 0.4 and softmax: the default model's network.

    Two additions to the plain recipe (``cnn6plain``): batch-norm after each conv and global
    average pooling before the dense layer (fewer weights, any input size). Pooling uses
    ``same`` padding so even 32x32 inputs survive six poolings. On validation it reached a
    higher macro-F1 than the plain network (0.70 vs 0.58), though less smoothly.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for filters in (32, 64, 64, 64, 128, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = _bn()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, 0.4), name="cnn6")


def build_cnn6plain(input_shape: Shape, num_classes: int) -> keras.Model:
    """The plain recipe: six 3x3 conv + ReLU layers (32, 64, 64, 64, 128, 128), each followed
    by 2x2 max-pooling, then Flatten, dense 64, dropout 0.5 and softmax; no batch-norm.

    Trains smoothly (no batch statistics to drift) but plateaued lower on validation.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for filters in (32, 64, 64, 64, 128, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, 0.5), name="cnn6plain")


def _residual_block(x: keras.KerasTensor, filters: int, stride: int) -> keras.KerasTensor:
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut, as in ResNet-18."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
        shortcut = _bn()(shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = _bn()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = _bn()(y)
    return layers.ReLU()(layers.Add()([shortcut, y]))


def build_rescnn(input_shape: Shape, num_classes: int) -> keras.Model:
    """A small ResNet: 3x3 stem, four stages (32, 64, 128, 128) of one residual block each.

    Sized for a CPU and a few hundred training images; residual shortcuts let it be
    deeper (9 conv layers) than cnn6 without the optimisation trouble of plain stacks.
    """
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = _bn()(x)
    x = layers.ReLU()(x)
    for filters, stride in ((32, 1), (64, 2), (128, 2), (128, 2)):
        x = _residual_block(x, filters, stride)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, 0.3), name="rescnn")


def _application(
    factory: Callable[..., keras.Model], name: str, expects_0_255: bool = False
) -> Builder:
    """Wrap a ``keras.applications`` backbone (random init, no download) with our head.

    ``expects_0_255``: the backbone starts with its own ``Rescaling(1/255)`` (Keras'
    EfficientNet B0-B7, which has no ``include_preprocessing`` switch), so our [0, 1]
    input is multiplied by 255 first; its un-adapted Normalization layer is the identity
    (mean 0, variance 1) with ``weights=None``, so the backbone finally sees [0, 1].
    """

    def build(input_shape: Shape, num_classes: int) -> keras.Model:
        inputs = keras.Input(input_shape, name="image")
        backbone = factory(include_top=False, weights=None, input_shape=input_shape, pooling="avg")
        for layer in backbone.layers:  # same reason as _bn(): ~20 steps per epoch
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9
        x = layers.Rescaling(255.0, name="to_0_255")(inputs) if expects_0_255 else inputs
        x = backbone(x)
        return keras.Model(inputs, _classifier_head(x, num_classes, 0.3), name=name)

    build.__doc__ = f"keras.applications {name} trained from scratch (weights=None)."
    return build


ARCHITECTURES: dict[str, Builder] = {
    "lenet": build_lenet,
    "alexnet": build_alexnet,
    "cnn6": build_cnn6,
    "cnn6plain": build_cnn6plain,
    "rescnn": build_rescnn,
    "vgg16": _application(keras.applications.VGG16, "vgg16"),
    "vgg19": _application(keras.applications.VGG19, "vgg19"),
    "resnet50": _application(keras.applications.ResNet50, "resnet50"),
    "efficientnetb0": _application(
        keras.applications.EfficientNetB0, "efficientnetb0", expects_0_255=True
    ),
}

# Smallest square input each builder accepts (keras.applications refuse below 32).
MIN_INPUT_SIZE: dict[str, int] = {name: 32 for name in ARCHITECTURES} | {"lenet": 8}


def build_model(arch: str, input_shape: Shape, num_classes: int) -> keras.Model:
    """Build architecture ``arch`` for ``input_shape`` (h, w, c) and ``num_classes`` outputs."""
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        known = sorted(ARCHITECTURES)
        raise ValueError(f"unknown architecture {arch!r}; choose from {known}") from None
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    h, w, c = input_shape  # a list (read from JSON) is taken too
    return builder((h, w, c), num_classes)
