"""Network builders. Every model takes raw uint8 pixels: casting, augmentation
(active only in training) and normalisation are layers inside it, so serving only
decodes and resizes."""

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from trainer.ml.config import TrainConfig
from trainer.ml.layers import Mirror

# resnet channel widths of the three blocks (airbench's are 64, 256, 256).
RESNET_WIDTHS = {"small": (16, 64, 64), "medium": (32, 128, 128), "large": (64, 256, 256)}
WHITENING_EPSILON = 5e-4  # airbench's, for unit-variance pixels


@dataclass(frozen=True)
class PixelStats:
    """Per-channel mean and variance of the training images (0-255 scale), and
    the whitening kernel of their 2x2 patches (see `whitening_kernel`)."""

    mean: tuple[float, float, float]
    variance: tuple[float, float, float]
    whitening: np.ndarray

    @classmethod
    def neutral(cls) -> "PixelStats":
        """For a model whose weights will be loaded or that has no data to look at:
        0-255 pixels to about unit range, patches kept as they are."""
        identity = np.eye(12) / np.sqrt(1 + WHITENING_EPSILON)
        kernel = np.concatenate([identity, -identity], axis=1).reshape(2, 2, 3, 24).astype(np.float32)
        return cls((127.5,) * 3, (4096.0,) * 3, kernel)  # type: ignore[arg-type]

    @classmethod
    def of(cls, images: np.ndarray, sample: int = 10_000) -> "PixelStats":
        # A strided sample: enough for two decimals, and cheap on a memory-mapped cache.
        step = max(len(images) // sample, 1)
        pixels = np.asarray(images[::step], dtype=np.float32)
        mean, variance = pixels.reshape(-1, 3).mean(axis=0), pixels.reshape(-1, 3).var(axis=0) + 1e-3
        # About a million pixels are plenty for a 12x12 covariance.
        count = max(1, 1_000_000 // (pixels.shape[1] * pixels.shape[2]))
        whitening = whitening_kernel((pixels[:count] - mean) / np.sqrt(variance))
        return cls(tuple(map(float, mean)), tuple(map(float, variance)), whitening)  # type: ignore[arg-type]


def whitening_kernel(images: np.ndarray) -> np.ndarray:
    """A 2x2 convolution kernel (2, 2, 3, 24) that whitens the images' 2x2 patches:
    their 12 principal components, each scaled to unit variance, and their negatives
    (so a ReLU after it loses nothing). airbench starts from this frozen layer; it
    lets the first epochs learn shapes instead of undoing pixel correlations."""
    height, width = images.shape[1] - 1, images.shape[2] - 1
    shifted = [images[:, i : i + height, j : j + width, :] for i in (0, 1) for j in (0, 1)]
    patches = np.stack(shifted, axis=-2).reshape(-1, 12).astype(np.float64)  # (i, j, channel) order, as Conv2D's
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
    scaled = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0) + WHITENING_EPSILON)
    return np.concatenate([scaled, -scaled], axis=1).reshape(2, 2, 3, 24).astype(np.float32)


def build_model(config: TrainConfig, num_classes: int, stats: PixelStats | None = None) -> Any:
    if config.arch == "baseline":
        return build_baseline(config.image_size, num_classes)
    if config.arch == "resnet":
        return build_resnet(config, num_classes, stats or PixelStats.neutral())
    # Pretrained backbones train features first, through trainer.ml.transfer.
    raise ValueError(f"{config.arch} is not a from-scratch architecture")


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
    speed record): a frozen patch-whitening stem, three conv-pool-BN-ReLU blocks
    with a residual conv each, global max pooling, a bias-free classifier and
    scaled-down logits."""
    widths = RESNET_WIDTHS[config.size if config.size != "auto" else "medium"]
    inputs = keras.Input(shape=(config.image_size, config.image_size, 3), dtype="uint8", name="image")
    x = augment(inputs, config)
    x = layers.Normalization(mean=stats.mean, variance=stats.variance, dtype="float32", name="normalize")(x)
    whiten = layers.Conv2D(24, 2, use_bias=False, trainable=False, name="stem_whiten")
    x = layers.ReLU(name="stem_relu")(whiten(x))
    for index, width in enumerate(widths, start=1):
        x = _conv_bn(x, width, f"block{index}", pool=True)
        x = layers.Add(name=f"block{index}_residual")([x, _conv_bn(x, width, f"block{index}_conv2")])
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    # Small logits keep the softmax soft early in the short schedule (ResNet-9 used 0.125).
    x = layers.Rescaling(0.125)(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    whiten.set_weights([stats.whitening])  # weights, not an initializer: the model file carries them
    return keras.Model(inputs, outputs, name="resnet")


def _conv_bn(x: Any, filters: int, name: str, *, pool: bool = False) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    if pool:
        x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    # Momentum 0.9, not Keras' 0.99: a run is only a thousand steps or so.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    # ReLU, not airbench's GELU: on a CPU the GELU costs a third of the step time.
    return layers.ReLU(name=f"{name}_relu")(x)


def augment(inputs: Any, config: TrainConfig) -> Any:
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
