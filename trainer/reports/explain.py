"""Where an evaluated model looked, for the report's galleries: an occlusion overlay
(trainer.ml.saliency) of one evaluated image for the class the model predicted. The
version's serving runtime is loaded in this process once (its checked ONNX file where
the training worker stored one, so no TensorFlow) and kept for the next tiles."""

import functools

import numpy as np

from datasets.selectors import image_pixels
from trainer.ml.runtimes import Runtime
from trainer.ml.saliency import occlusion_map, overlay_png
from trainer.models import ModelVersion, Prediction
from trainer.registry.runtimes import serving_runtime


class NothingToExplain(Exception):
    """The image or the model file is gone; the message says which."""


def prediction_overlay(prediction: Prediction) -> bytes:
    """PNG: the image as the model saw it, with where it looked for its predicted class."""
    version = prediction.evaluation.model_version
    pixels = image_pixels(prediction.image, version.image_size) if prediction.image else None
    if pixels is None:
        raise NothingToExplain("The image has been deleted since the evaluation, or its file is unreadable.")
    heat = occlusion_map(_runtime(version).predict, pixels, prediction.predicted_index)
    return overlay_png(np.asarray(pixels), heat)


def _runtime(version: ModelVersion) -> Runtime:
    try:
        return _loaded(version.pk, version.sha256)
    except Exception as exc:  # a missing or damaged file, a model no runtime loads: the tile says so
        raise NothingToExplain(f"The model of this evaluation cannot be loaded: {exc}") from exc


@functools.lru_cache(maxsize=2)  # the report being read, and the one compared with it
def _loaded(pk: int, sha256: str) -> Runtime:
    return serving_runtime(ModelVersion.objects.get(pk=pk, sha256=sha256))
