"""Answers predictions with each dataset's live (promoted) model version.

A process keeps a table of what every dataset serves, read from the database at
most once per PREDICT_RELOAD_SECONDS (and from a thread of its own when requests
stop), and loads models lazily: a dataset's model on its first request. Loaded
models are kept under PREDICT_MEMORY_MB, the least recently used evicted first.

Loading a version checks its SHA-256, builds the fastest runtime whose answers on
the version's own test images equal Keras' (trainer.ml.runtimes), warms it up, and
answers many images in one call. When a loaded dataset's promoted version changes,
the new one loads in a background thread while the old one keeps answering, and is
swapped in when ready. A version that fails to load is logged; the old one goes on
serving, and the load is retried with backoff (PREDICT_LOAD_RETRY_SECONDS,
doubling), so a transient storage error heals without a restart. TensorFlow is
imported on the first load that needs it, not at start-up: a model ONNX Runtime
was chosen for before is checked against Keras' stored answers without it.
"""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from django.conf import settings
from django.db import connection

from datasets.imaging import check_total_pixels, load_array
from trainer.ml.runtimes import Runtime
from trainer.ml.saliency import occlusion_map, overlay_png
from trainer.models import ModelVersion
from trainer.registry.files import NoModelAvailable
from trainer.registry.runtimes import serving_runtime
from trainer.registry.selectors import ServedKey, ServedTable, model_version_serving, served_table

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
RETRY_CEILING_SECONDS = 60.0  # backoff doubles up to this


class NotServed(NoModelAvailable):
    """The dataset a request named has no live model (or no such dataset exists)."""

    def __init__(self, dataset: int | str) -> None:
        super().__init__(f"Dataset {dataset!r} has no live model: train one on it, then promote it.")
        self.dataset = dataset


@dataclass(frozen=True)
class ClassScore:
    label: str
    probability: float


@dataclass(frozen=True)
class Explanation:
    """Where the model looked for its best class (trainer.ml.saliency): the map and the image under it."""

    label: str
    grid: np.ndarray  # (GRID, GRID), 0..1
    png: bytes  # the image as the model saw it, the map laid over it


@dataclass(frozen=True)
class Prediction:
    version: ModelVersion
    scores: list[ClassScore]  # best first
    threshold: float  # the version's rejection threshold when it answered
    explanation: Explanation | None = None  # asked for with explain=True

    @property
    def is_unknown(self) -> bool:
        return self.scores[0].probability < self.threshold

    @property
    def label(self) -> str:
        """The answer: the best class, or "unknown" below the version's threshold."""
        return UNKNOWN if self.is_unknown else self.scores[0].label


@dataclass(frozen=True)
class Loaded:
    version: ModelVersion  # the row as it was loaded, dataset included
    threshold: float  # refreshed with every check: admins may change it
    runtime: Runtime

    @property
    def key(self) -> tuple[int, str]:
        return self.version.pk, self.version.sha256


@dataclass(frozen=True)
class _Failure:
    reason: str
    attempts: int
    retry_at: float  # time.monotonic()


class Predictor:
    # After its first load a predictor also checks from a thread of its own every
    # PREDICT_RELOAD_SECONDS, so a process that sat idle answers its next request
    # with the new version too. (Tests turn it off: they swap predictors per test.)
    watch = True

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dicts below; never held while loading
        self._table: ServedTable | None = None
        self._checked_at = float("-inf")
        self._models: OrderedDict[int, Loaded] = OrderedDict()  # dataset id -> model, least recently used first
        self._loading: dict[int, threading.Thread] = {}  # dataset id -> background reload
        self._load_locks: dict[int, threading.Lock] = {}  # one first load per dataset at a time
        self._failed: dict[tuple[int, str], _Failure] = {}  # versions that would not load: why, and when to retry
        self._watcher: threading.Thread | None = None

    # --- answering -----------------------------------------------------------------------

    def predict(self, data: bytes, *, dataset: int | str | None = None, top_k: int = 5) -> Prediction:
        return self.predict_many([data], dataset=dataset, top_k=top_k)[0]

    def predict_many(
        self, images: Sequence[bytes], *, dataset: int | str | None = None, top_k: int = 5, explain: bool = False
    ) -> list[Prediction]:
        """One batched model call for all `images` with `dataset`'s live model (an id or
        a name; None: the site's default), and with `explain` where it looked for each
        best class (one more batched call per image). Raises TooManyPixels (their headers
        hold more than PREDICT_MAX_REQUEST_PIXELS) or ImageRejected (naming no index:
        callers decode one by one for that) before the model is touched."""
        check_total_pixels(images, settings.PREDICT_MAX_REQUEST_PIXELS)
        loaded = self.current(dataset)
        size = loaded.version.image_size
        # Decode before the model runs: bad input costs nothing.
        batch = np.stack([load_array(data, size, max_pixels=settings.MAX_IMAGE_PIXELS) for data in images])
        probabilities = loaded.runtime.predict(batch)
        predictions = [_prediction(loaded, row, top_k) for row in probabilities]
        if explain:
            predictions = [replace(p, explanation=_explain(loaded, pixels, row))
                           for p, pixels, row in zip(predictions, batch, probabilities, strict=True)]  # fmt: skip
        return predictions

    def current(self, dataset: int | str | None = None) -> Loaded:
        """`dataset`'s loaded model, checking the database at most once per interval
        and loading it here if this process holds none of that dataset's."""
        if time.monotonic() - self._checked_at >= settings.PREDICT_RELOAD_SECONDS:
            self.refresh()
        table = self._table
        dataset_id = table.dataset_id(dataset) if table is not None else None
        if dataset_id is None:
            if dataset is None:
                raise NoModelAvailable("No model is being served yet: train one, then promote it.")
            raise NotServed(dataset)
        with self._lock:
            loaded = self._models.get(dataset_id)
            if loaded is not None:
                self._models.move_to_end(dataset_id)
                return loaded
        return self._first_load(dataset_id)

    # --- what is served ---------------------------------------------------------------------

    def refresh(self, *, wait: bool = False) -> None:
        """Read what every dataset serves now. A loaded dataset whose version changed
        reloads in the background (the old version answers meanwhile), one that has
        none any more is dropped, and changed thresholds apply at once."""
        table = served_table()
        changed: list[int] = []
        with self._lock:
            self._checked_at = time.monotonic()
            self._table = table
            for dataset_id, loaded in list(self._models.items()):
                key = table.by_dataset.get(dataset_id)
                if key is None:
                    del self._models[dataset_id]
                elif (key.version_id, key.sha256) != loaded.key:
                    changed.append(dataset_id)
                elif key.threshold != loaded.threshold:
                    self._models[dataset_id] = replace(loaded, threshold=key.threshold)
        for dataset_id in changed:
            self._reload_in_background(dataset_id, table.by_dataset[dataset_id])
        if wait:
            self.wait_for_reload()

    def loaded(self) -> list[Loaded]:
        """The models this process holds, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def wait_for_reload(self, timeout: float = 60.0) -> None:
        for thread in list(self._loading.values()):
            thread.join(timeout)

    # --- loading ------------------------------------------------------------------------------

    def _first_load(self, dataset_id: int) -> Loaded:
        """Nothing of this dataset is loaded: load its version in the caller (there is
        nothing to answer with meanwhile), once however many requests wait for it."""
        with self._load_locks.setdefault(dataset_id, threading.Lock()):
            with self._lock:
                if (loaded := self._models.get(dataset_id)) is not None:
                    return loaded  # another request loaded it while this one waited
            version = model_version_serving(dataset_id=dataset_id)
            if version is None:
                raise NotServed(dataset_id)
            if (failure := self._failed.get((version.pk, version.sha256))) and time.monotonic() < failure.retry_at:
                wait = failure.retry_at - time.monotonic()
                raise NoModelAvailable(f"{failure.reason} Trying again in {wait:.0f} s.")
            loaded = self._load(version)
            if loaded is None:
                raise NoModelAvailable(self._failed[(version.pk, version.sha256)].reason)
            self._start_watching()
            return loaded

    def _reload_in_background(self, dataset_id: int, key: ServedKey) -> None:
        if not self._may_reload(dataset_id, key):
            return
        # Read here, not in the thread (the row as this request's connection sees it),
        # and outside the lock: requests answering meanwhile take it.
        version = model_version_serving(dataset_id=dataset_id)
        if version is None or version.pk != key.version_id:
            return  # promoted again meanwhile: the next check sees it
        with self._lock:
            if not self._may_reload(dataset_id, key):
                return  # another request started it while this one read the row
            thread = threading.Thread(target=self._load, args=(version,), name="model-reload", daemon=True)
            self._loading[dataset_id] = thread
        thread.start()

    def _may_reload(self, dataset_id: int, key: ServedKey) -> bool:
        """No reload of the dataset running, and the version not waiting out a backoff."""
        failure = self._failed.get((key.version_id, key.sha256))
        running = self._loading.get(dataset_id)
        return not ((running and running.is_alive()) or (failure and time.monotonic() < failure.retry_at))

    def _load(self, version: ModelVersion) -> Loaded | None:
        """Load `version` and serve its dataset with it; None (the reason recorded, a
        retry scheduled) if it fails. Any failure keeps what is served."""
        key = (version.pk, version.sha256)
        try:
            runtime = serving_runtime(version)
        except Exception as exc:
            self._record_failure(version, exc)
            return None
        with self._lock:
            self._failed.pop(key, None)
            threshold = self._threshold(version)
            loaded = Loaded(version=version, threshold=threshold, runtime=runtime)
            self._models[version.dataset_id] = loaded
            self._models.move_to_end(version.dataset_id)
        self.fit_budget()
        logger.info("serving model version %s of %s through %s", version.pk, version.dataset.name, runtime.name)
        return loaded

    def _threshold(self, version: ModelVersion) -> float:
        key = self._table.by_dataset.get(version.dataset_id) if self._table else None
        return key.threshold if key and key.version_id == version.pk else version.rejection_threshold

    def _record_failure(self, version: ModelVersion, exc: Exception) -> None:
        key = (version.pk, version.sha256)
        detail = str(exc).rstrip(".")
        reason = str(exc) if isinstance(exc, NoModelAvailable) else f"Version {version.pk} failed to load: {detail}."
        attempts = self._failed[key].attempts + 1 if key in self._failed else 1
        delay = min(settings.PREDICT_LOAD_RETRY_SECONDS * 2 ** (attempts - 1), RETRY_CEILING_SECONDS)
        with self._lock:
            self._failed[key] = _Failure(reason, attempts, time.monotonic() + delay)
            serving = self._models.get(version.dataset_id)
        logger.error(
            "model version %s not loaded (%s); still serving %s; trying again in %.1f s",
            version.pk, reason, serving.version.pk if serving else None, delay,
        )  # fmt: skip

    def fit_budget(self) -> list[Loaded]:
        """Drop the least recently used models until the rest fit PREDICT_MEMORY_MB (the
        most recently used stays, even alone over budget); what was dropped. Every load
        calls it."""
        budget = settings.PREDICT_MEMORY_MB * 2**20
        evicted = []
        with self._lock:
            while len(self._models) > 1 and sum(m.runtime.nbytes for m in self._models.values()) > budget:
                evicted.append(self._models.popitem(last=False)[1])
        for loaded in evicted:
            logger.info("evicted model version %s (PREDICT_MEMORY_MB=%g)", loaded.version.pk, budget / 2**20)
        return evicted

    def _start_watching(self) -> None:
        with self._lock:
            if not self.watch or self._watcher is not None:
                return
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
                logger.exception("checking the promoted model versions failed")
            finally:
                connection.close()  # this thread's own connection: not held while it sleeps


def _prediction(loaded: Loaded, probabilities: np.ndarray, top_k: int) -> Prediction:
    classes = loaded.version.classes
    order = np.argsort(probabilities)[::-1][: max(1, top_k)]
    scores = [ClassScore(label=classes[i], probability=float(probabilities[i])) for i in order]
    return Prediction(version=loaded.version, scores=scores, threshold=loaded.threshold)


def _explain(loaded: Loaded, pixels: np.ndarray, probabilities: np.ndarray) -> Explanation:
    best = int(np.argmax(probabilities))
    grid = occlusion_map(loaded.runtime.predict, pixels, best)
    return Explanation(label=str(loaded.version.classes[best]), grid=grid, png=overlay_png(pixels, grid))


_predictor = Predictor()


def get_predictor() -> Predictor:
    """The process-wide predictor (every dataset's live model, loaded as asked for)."""
    return _predictor
