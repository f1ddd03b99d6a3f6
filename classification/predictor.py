"""Answers predictions with the serving model version.

A process loads a version once (after checking its SHA-256), keeps a compiled
`tf.function` with a fixed input signature, and reloads when the serving
version changes. TensorFlow is imported on the first prediction, not at start-up.
"""

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage

from datasets.imaging import load_array
from trainer.ml.files import sha256_file
from trainer.models import ModelVersion
from trainer.selectors import model_version_serving

logger = logging.getLogger(__name__)


class NoModelAvailable(Exception):
    """No finished model exists yet, or its file is missing or damaged."""


@dataclass(frozen=True)
class ClassScore:
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    version: ModelVersion
    scores: list[ClassScore]  # best first


@dataclass
class _Loaded:
    version_id: int
    sha256: str
    predict: Any  # tf.function: uint8 (n, s, s, 3) -> float32 (n, classes)


class Predictor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    def predict(self, data: bytes, *, top_k: int = 5) -> Prediction:
        version = model_version_serving()
        if version is None:
            raise NoModelAvailable("No trained model yet: train one first.")
        # Decode before loading the model: bad input costs nothing.
        pixels = load_array(data, version.image_size, max_pixels=settings.MAX_IMAGE_PIXELS)
        loaded = self._get(version)
        probs = np.asarray(loaded.predict(pixels[np.newaxis]))[0]
        order = np.argsort(probs)[::-1][: max(1, top_k)]
        scores = [ClassScore(label=version.classes[i], probability=float(probs[i])) for i in order]
        return Prediction(version=version, scores=scores)

    def _get(self, version: ModelVersion) -> _Loaded:
        loaded = self._loaded
        if loaded and loaded.version_id == version.pk and loaded.sha256 == version.sha256:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.version_id != version.pk:
                self._loaded = _load(version)
                logger.info("serving model version %s", version.pk)
            return self._loaded


def _load(version: ModelVersion) -> _Loaded:
    import keras
    import tensorflow as tf

    import trainer.ml.layers  # noqa: F401  registers the custom layers saved in model files

    path = local_model_file(version)
    model = keras.saving.load_model(path, compile=False)
    size = version.image_size
    spec = tf.TensorSpec(shape=(None, size, size, 3), dtype=tf.uint8)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)
    return _Loaded(version_id=version.pk, sha256=version.sha256, predict=fn)


def local_model_file(version: ModelVersion) -> Path:
    """A verified local file of the version: storage may be remote, and files can rot."""
    cache = Path(settings.MODEL_CACHE_DIR) / f"{version.sha256}.keras"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial")
        try:
            with default_storage.open(str(version.file.name)) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            raise NoModelAvailable(f"Model file of version {version.pk} is missing.") from exc
        partial.replace(cache)
    if sha256_file(cache) != version.sha256:
        cache.unlink(missing_ok=True)
        raise NoModelAvailable(f"Model file of version {version.pk} is damaged (checksum mismatch).")
    return cache


_predictor = Predictor()


def get_predictor() -> Predictor:
    """The process-wide predictor (one loaded model per process)."""
    return _predictor
