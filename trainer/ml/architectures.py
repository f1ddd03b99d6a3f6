"""Network builders. Every model takes raw uint8 pixels: casting, augmentation
(active only in training) and normalisation are layers inside it, so serving only
decodes and resizes."""

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from trainer.ml.config import BACKBONES, TrainConfig
from trainer.ml.layers import Mirror
from trainer.ml.weights import weights_path

# resnet channel widths: stem, then the three blocks (airbench's are 24 / 64, 256, 256).
RESNET_WIDTHS = {"small": (16, 16, 64, 64), "medium": (24, 32, 128, 128), "large": (24, 64, 256, 256)}


@dataclass(frozen=True)
class PixelStats:
    """Per-channel mean and variance of the training images (0-255 scale)."""

    mean: tuple[float, float, float]
    variance: tuple[float, float, float]

    @classmethod
    def of(cls, images: np.ndarray, sample: int = 10_000) -> "PixelStats":
        # A strided sample: enough for two decimals, and cheap on a memory-mapped cache.
        step = max(len(images) // sample, 1)
        pixels = np.asarray(images[::step], dtype=np.float32).reshape(-1, 3)
        mean, variance = pixels.mean(axis=0), pixels.var(axis=0) + 1e-3
        return cls(mean=tuple(map(float, mean)), variance=tuple(map(float, variance)))  # type: ignore[arg-type]


def build_model(config: TrainConfig, num_classes: int, stats: PixelStats | None = None) -> Any:
    if config.arch == "baseline":
        return build_baseline(config.image_size, num_classes)
    if config.arch == "resnet":
        return build_resnet(config, num_classes, stats or PixelStats((127.5,) * 3, (4096.0,) * 3))  # type: ignore[arg-type]
    return build_pretrained(config, num_classes)


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


def build_resnet(config: TrainConfig, num_classes: int, stats: PixelStats) -> Any:
    """A compact residual CNN in the shape of airbench (Keller Jordan's CIFAR-10
    speed record): a stem, three conv-pool-BN-ReLU blocks with a residual conv
    each, global max pooling, a bias-free classifier and scaled-down logits."""
    stem, *widths = RESNET_WIDTHS[config.size if config.size != "auto" else "medium"]
    inputs = keras.Input(shape=(config.image_size, config.image_size, 3), dtype="uint8", name="image")
    x = _augment(inputs, config)
    x = layers.Normalization(mean=stats.mean, variance=stats.variance, dtype="float32", name="normalize")(x)
    x = _conv_bn(x, stem, "stem")
    for index, width in enumerate(widths, start=1):
        x = _conv_bn(x, width, f"block{index}", pool=True)
        x = layers.Add(name=f"block{index}_residual")([x, _conv_bn(x, width, f"block{index}_conv2")])
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    # Small logits keep the softmax soft early in the short schedule (ResNet-9 used 0.125).
    x = layers.Rescaling(0.125)(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="resnet")


def _conv_bn(x: Any, filters: int, name: str, *, pool: bool = False) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    if pool:
        x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    # Momentum 0.9, not Keras' 0.99: a run is only a thousand steps or so.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    # ReLU, not airbench's GELU: on a CPU the GELU costs a third of the step time.
    return layers.ReLU(name=f"{name}_relu")(x)


def build_pretrained(config: TrainConfig, num_classes: int) -> Any:
    """An ImageNet backbone, frozen and called in inference mode (its batch-norm
    statistics stay ImageNet's even when fine-tuning), under a new classifier head."""
    application, alpha, _ = BACKBONES[config.arch]
    path = weights_path(config.arch)  # fails before any work when the file is missing
    kwargs = {"alpha": alpha} if application.startswith("MobileNet") else {}
    shape = (config.image_size, config.image_size, 3)
    base = getattr(keras.applications, application)(input_shape=shape, include_top=False, weights=None, **kwargs)
    base.load_weights(str(path))
    base.trainable = False
    inputs = keras.Input(shape=shape, dtype="uint8", name="image")
    x = _augment(inputs, config)
    if application.startswith("MobileNet"):
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(x)  # what MobileNets were trained on
    # EfficientNet rescales and normalises inside itself, from 0-255.
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=config.arch)


def backbone(model: Any) -> Any:
    """The pretrained base inside a build_pretrained model."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def _augment(inputs: Any, config: TrainConfig) -> Any:
    """uint8 to float32, then the configured augmentations (no-ops at inference)."""
    x = layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    seed = config.seed
    if config.flip:
        x = layers.RandomFlip("horizontal", seed=seed, name="flip")(x)
    if config.translate:
        x = layers.RandomTranslation(config.translate, config.translate, fill_mode="reflect", seed=seed + 1)(x)
    if config.rotation:
        x = layers.RandomRotation(config.rotation / 360, fill_mode="reflect", seed=seed + 2)(x)
    if config.zoom:
        x = layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 3)(x)
    if config.contrast:
        x = layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 4)(x)
    return x


def with_flip_tta(model: Any) -> Any:
    """A model answering the mean of `model` on the image and on its mirror."""
    inputs = keras.Input(shape=model.input.shape[1:], dtype="uint8", name="image")
    both = [model(inputs), model(Mirror(name="mirror")(inputs))]
    outputs = layers.Average(dtype="float32", name="probabilities")(both)
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_tta")
