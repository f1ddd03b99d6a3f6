"""Answers predictions with the promoted model version.

A process loads the promoted version once (after checking its SHA-256), keeps a
compiled `tf.function` with a fixed input signature, warms it up, and answers
many images in one call. At most once per PREDICT_RELOAD_SECONDS it asks the
database which version is promoted; a new one is loaded in a background thread
while the old one keeps answering, and swapped in when ready. A version that
fails to load is logged and skipped: the old one goes on serving. TensorFlow is
imported on the first prediction, not at start-up.
"""

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection

from datasets.imaging import load_array
from trainer.models import ModelVersion
from trainer.registry.files import NoModelAvailable, local_model_file
from trainer.registry.selectors import model_version_promoted_key, model_version_serving

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClassScore:
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    version: ModelVersion
    scores: list[ClassScore]  # best first
    threshold: float  # the version's rejection threshold when it answered

    @property
    def is_unknown(self) -> bool:
        return self.scores[0].probability < self.threshold

    @property
    def label(self) -> str:
        """The answer: the best class, or "unknown" below the version's threshold."""
        return UNKNOWN if self.is_unknown else self.scores[0].label


@dataclass(frozen=True)
class _Loaded:
    version: ModelVersion  # the row as it was loaded, dataset included
    threshold: float  # refreshed with every check: admins may change it
    predict: Any  # tf.function: uint8 (n, s, s, 3) -> float32 (n, classes)

    @property
    def key(self) -> tuple[int, str]:
        return self.version.pk, self.version.sha256


class Predictor:
    # After its first load a predictor also checks from a thread of its own every
    # PREDICT_RELOAD_SECONDS, so a process that sat idle answers its next request
    # with the new version too. (Tests turn it off: they swap predictors per test.)
    watch = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._checked_at = float("-inf")
        self._loading: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._failed: dict[tuple[int, str], str] = {}  # versions that would not load, and why

    def predict(self, data: bytes, *, top_k: int = 5) -> Prediction:
        return self.predict_many([data], top_k=top_k)[0]

    def predict_many(self, images: Sequence[bytes], *, top_k: int = 5) -> list[Prediction]:
        """One batched model call for all `images`; raises ImageRejected (naming no
        index: callers decode one by one for that) before the model is touched."""
        loaded = self.current()
        size = loaded.version.image_size
        # Decode before the model runs: bad input costs nothing.
        batch = np.stack([load_array(data, size, max_pixels=settings.MAX_IMAGE_PIXELS) for data in images])
        probabilities = np.asarray(loaded.predict(batch))
        return [_prediction(loaded, row, top_k) for row in probabilities]

    def current(self) -> _Loaded:
        """The loaded promoted version, checking the database at most once per interval."""
        if time.monotonic() - self._checked_at >= settings.PREDICT_RELOAD_SECONDS:
            self.refresh()
        loaded = self._loaded
        if loaded is None:
            raise NoModelAvailable("No model is being served yet: train one, then promote it.")
        return loaded

    def refresh(self, *, wait: bool = False) -> None:
        """Look up the promoted version now; load it if it changed. The first load
        happens in the caller (there is nothing to serve meanwhile); later ones in a
        background thread, unless `wait`."""
        with self._lock:
            self._checked_at = time.monotonic()
            key = model_version_promoted_key()
            loaded = self._loaded
            if key is None:
                self._loaded = None
                return
            version_id, sha256, threshold = key
            if loaded is not None and loaded.key == (version_id, sha256):
                if loaded.threshold != threshold:
                    self._loaded = replace(loaded, threshold=threshold)
                return
            if (version_id, sha256) in self._failed or (self._loading and self._loading.is_alive()):
                return
            version = model_version_serving()
            if version is None or version.pk != version_id:
                return  # promoted again meanwhile: the next check sees it
            if loaded is None:
                self._load(version)
                if self._loaded is None:
                    raise NoModelAvailable(self._failed[(version.pk, version.sha256)])
                self._start_watching()
                return
            self._loading = threading.Thread(target=self._load, args=(version,), name="model-reload", daemon=True)
            self._loading.start()
        if wait:
            self.wait_for_reload()

    def _start_watching(self) -> None:
        if self.watch and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="model-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while get_predictor() is self:
            time.sleep(max(settings.PREDICT_RELOAD_SECONDS, 0.1))
            if time.monotonic() - self._checked_at < settings.PREDICT_RELOAD_SECONDS:
                continue  # requests are checking anyway
            try:
                self.refresh()
            except Exception:  # never let the watcher die: requests still check
                logger.exception("checking the promoted model version failed")
            finally:
                connection.close()  # this thread's own connection: not held while it sleeps

    def wait_for_reload(self, timeout: float = 60.0) -> None:
        if self._loading is not None:
            self._loading.join(timeout)

    def _load(self, version: ModelVersion) -> None:
        try:
            fn = _compile(version)
        except Exception as exc:  # any failure: keep serving what we have
            reason = str(exc) if isinstance(exc, NoModelAvailable) else f"Version {version.pk} failed to load: {exc}"
            self._failed[(version.pk, version.sha256)] = reason
            serving = self._loaded.version.pk if self._loaded else None
            logger.error("model version %s not loaded (%s); still serving %s", version.pk, reason, serving)
            return
        self._loaded = _Loaded(version=version, threshold=version.rejection_threshold, predict=fn)
        logger.info("serving model version %s", version.pk)


def _prediction(loaded: _Loaded, probabilities: np.ndarray, top_k: int) -> Prediction:
    classes = loaded.version.classes
    order = np.argsort(probabilities)[::-1][: max(1, top_k)]
    scores = [ClassScore(label=classes[i], probability=float(probabilities[i])) for i in order]
    return Prediction(version=loaded.version, scores=scores, threshold=loaded.threshold)


_tf_configured = False


def _compile(version: ModelVersion) -> Any:
    """The version's model as a warmed-up `tf.function` over uint8 batches."""
    global _tf_configured
    import keras
    import tensorflow as tf

    import trainer.ml.layers  # noqa: F401  registers the custom layers saved in model files

    if not _tf_configured and settings.PREDICT_TF_THREADS:
        try:  # only possible before TensorFlow's first op in this process
            tf.config.threading.set_intra_op_parallelism_threads(settings.PREDICT_TF_THREADS)
            tf.config.threading.set_inter_op_parallelism_threads(settings.PREDICT_TF_THREADS)
        except RuntimeError as exc:  # TensorFlow ran already here (a test, a shell): keep its threads
            logger.warning("PREDICT_TF_THREADS not applied: %s", exc)
    _tf_configured = True
    path = local_model_file(version)
    # safe_mode: a model file can never run code of its own (no Lambda layers).
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    size = version.image_size
    spec = tf.TensorSpec(shape=(None, size, size, 3), dtype=tf.uint8)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    # The concrete function of that one signature: calling it skips tf.function's
    # argument binding and dispatch, half a millisecond a call.
    compiled = fn.get_concrete_function()
    for batch in sorted({1, settings.PREDICT_MAX_IMAGES}):  # touch every kernel once
        compiled(tf.zeros((batch, size, size, 3), tf.uint8))
    return compiled


_predictor = Predictor()


def get_predictor() -> Predictor:
    """The process-wide predictor (one loaded model per process)."""
    return _predictor
