"""Custom pieces saved inside model files. Registered with Keras, so any process
that loads a model (the worker, the predictor) imports this module first."""

from typing import Any

import keras
from keras import ops

PACKAGE = "classifier_site"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mirror(keras.layers.Layer):
    """Flips images left to right; flip test-time augmentation averages both views."""

    def call(self, inputs: Any) -> Any:
        return ops.flip(inputs, axis=-2)


@keras.saving.register_keras_serializable(package=PACKAGE)
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear rise from peak/25 to `peak` over `warmup` steps, then linear fall to
    zero at `total` steps: the triangle of the CIFAR-10 speed records."""

    def __init__(self, peak: float, total: int, warmup: int) -> None:
        self.peak, self.total, self.warmup = float(peak), max(int(total), 1), max(int(warmup), 1)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        start = self.peak / 25.0
        rising = start + (self.peak - start) * step / self.warmup
        falling = self.peak * (self.total - step) / max(self.total - self.warmup, 1)
        return ops.maximum(ops.where(step < self.warmup, rising, falling), 0.0)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup}
