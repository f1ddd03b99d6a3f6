"""Network builders. Each takes the image size and class count and returns an
uncompiled Keras model whose input is raw uint8 pixels: scaling lives inside the
model, so serving only decodes and resizes."""

from collections.abc import Callable
from typing import Any

import keras
from keras import layers


def build_baseline(image_size: int, num_classes: int) -> Any:
    """The seed notebook's CNN, layer for layer (it reached 65-70% on CIFAR-10)."""
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="baseline")


BUILDERS: dict[str, Callable[[int, int], Any]] = {"baseline": build_baseline}


def build_model(arch: str, image_size: int, num_classes: int) -> Any:
    return BUILDERS[arch](image_size, num_classes)
