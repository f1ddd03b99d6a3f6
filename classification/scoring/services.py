"""Model assistance: the promoted model scores every image of a dataset, and each
Image row keeps its suggestion (a class name of the model), confidence, margin and
entropy, for the labelling workbench to sort, filter and review by.

A run is a row (classification.models.ScoringRun) queued here and claimed by a worker
with a conditional UPDATE, like exports. TensorFlow loads inside `scoring_run`
only (a worker, the `score_dataset` command), never in web processes.
"""

import logging
from collections.abc import Callable
from functools import partial

import numpy as np
from celery import Task
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from classification.models import SCORING_STALE, ScoringRun
from classification.scoring.selectors import scoring_runs
from classifier_site.errors import Refused
from classifier_site.runs import Lifecycle, RunStatus, describe_error
from datasets.models import Dataset, Image
from datasets.selectors import image_pixels
from trainer.models import ModelVersion
from trainer.registry.files import NoModelAvailable, local_model_file
from trainer.registry.selectors import model_version_serving

logger = logging.getLogger(__name__)

BATCH = 256  # images per model call, per bulk update and per progress step
SUGGESTION_FIELDS = [
    "suggestion",
    "suggestion_confidence",
    "suggestion_margin",
    "suggestion_entropy",
    "suggestion_version",
]


class ScoringRefused(Refused):
    """A run cannot start; the message says why, for people."""


def _task() -> Task:
    from classification.tasks import score_dataset

    return score_dataset


RUNS = Lifecycle(ScoringRun, _task, heartbeat=True)


class _Lost(Exception):
    """The run is no longer this worker's: deleted, or failed as stale meanwhile."""


def scoring_start(
    *, dataset: Dataset, version: ModelVersion | None = None, user: User | None = None, enqueue: bool = True
) -> ScoringRun:
    """Queue a run of `dataset`'s live model (or of `version`, when told) over
    `dataset` (sent to a worker's `default` queue when the transaction commits,
    unless the caller runs it itself)."""
    if version is None:
        version = model_version_serving(dataset_id=dataset.pk)
    if version is None:
        raise ScoringRefused(
            f"{dataset.name} has no live model: train one on it (its first version goes live), "
            "promote one in the model registry, or name the version to score with."
        )
    _fail_stale(dataset)
    create = partial(ScoringRun.objects.create, dataset=dataset, model_version=version, created_by=user)
    busy = f"{dataset.name} is already being scored"
    run: ScoringRun = RUNS.start_one(ScoringRun.objects.filter(dataset=dataset), create, enqueue=enqueue, busy=busy,
                                     refusal=ScoringRefused)  # fmt: skip
    return run


def _fail_stale(dataset: Dataset) -> None:
    """A running run whose worker died must not block the next one."""
    RUNS.fail_stale(ScoringRun.objects.filter(dataset=dataset), after=SCORING_STALE)


def scoring_run(*, run_id: int) -> ScoringRun | None:
    """Score every image of a queued run's dataset (the Celery task and the command
    call this). None when the row is gone (its dataset or model was deleted)."""
    if not RUNS.claim(run_id):
        logger.info("scoring run %s is not queued; nothing to do (duplicate delivery?)", run_id)
        return scoring_runs().filter(pk=run_id).first()
    run = scoring_runs().get(pk=run_id)
    try:
        _score(run)
    except _Lost:
        logger.warning("scoring run %s was deleted or failed meanwhile; stopped", run_id)
    except Exception as exc:
        logger.exception("scoring run %s failed", run_id)
        RUNS.finish(run_id, RunStatus.FAILED, error=describe_error(exc, NoModelAvailable))
    else:
        RUNS.finish(run_id, RunStatus.SUCCEEDED)
    return scoring_runs().filter(pk=run_id).first()


def _score(run: ScoringRun) -> None:
    from trainer.ml.inference import compiled_predict

    version = run.model_version
    predict = compiled_predict(local_model_file(version))
    predict = _with_cached_features(version, predict)
    # Images added from here on wait for the next run: the total stays true.
    images = Image.objects.filter(dataset_id=run.dataset_id).order_by("pk").only("pk", "file")
    last = images.values_list("pk", flat=True).last() or 0
    images = images.filter(pk__lte=last)
    RUNS.running(run.pk).update(total=images.count(), heartbeat_at=timezone.now())
    after = 0
    while batch := list(images.filter(pk__gt=after)[:BATCH]):
        _score_batch(run, batch, predict)
        after = batch[-1].pk
    logger.info("scoring run %s: dataset %s scored with model version %s", run.pk, run.dataset_id, version.pk)


def _score_batch(run: ScoringRun, batch: list[Image], predict: Callable[[np.ndarray], np.ndarray]) -> None:
    """One model call for the readable images of `batch`, one bulk update for all of
    them: an unreadable image loses any older suggestion rather than keep a stale one."""
    from trainer.ml.inference import scores

    version = run.model_version
    cached = predict if isinstance(predict, _CachedPredict) else None
    reused = [image for image in batch if cached and cached.known(image.pk)]
    readable: list[Image] = []
    arrays: list[np.ndarray] = []
    for image in batch:
        if cached and cached.known(image.pk):
            continue
        if (array := image_pixels(image, version.image_size)) is not None:
            readable.append(image)
            arrays.append(array)
    for image in batch:
        image.suggestion, image.suggestion_version = "", None
        image.suggestion_confidence = image.suggestion_margin = image.suggestion_entropy = None
    probabilities = [cached.images([i.pk for i in reused])] if cached and reused else []
    if readable:
        probabilities.append(predict(np.stack(arrays)))
    readable = reused + readable
    if readable:
        found = scores(np.concatenate(probabilities))
        for row, image in enumerate(readable):
            image.suggestion = str(version.classes[int(found.top[row])])
            image.suggestion_confidence = float(found.confidence[row])
            image.suggestion_margin = float(found.margin[row])
            image.suggestion_entropy = float(found.entropy[row])
            image.suggestion_version = version.pk
    with transaction.atomic():
        progress = {"processed": F("processed") + len(batch), "skipped": F("skipped") + len(batch) - len(readable)}
        if not RUNS.running(run.pk).update(heartbeat_at=timezone.now(), **progress):
            raise _Lost
        Image.objects.bulk_update(batch, SUGGESTION_FIELDS)


class _CachedPredict:
    """Answers images the training job's feature cache holds from their features
    (the head alone: milliseconds), and the others through the whole model."""

    def __init__(self, features: dict[int, np.ndarray], head: Callable[[np.ndarray], np.ndarray],
                 model: Callable[[np.ndarray], np.ndarray]) -> None:  # fmt: skip
        self.features, self.head, self.model = features, head, model

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.model(pixels)

    def known(self, image_id: int) -> bool:
        return image_id in self.features

    def images(self, ids: list[int]) -> np.ndarray:
        return self.head(np.stack([self.features[i] for i in ids]))


def _with_cached_features(
    version: ModelVersion, predict: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    """A frozen-head transfer model whose job's features are still cached scores from them."""
    from trainer.jobs.snapshots import backbone_key, cached_features
    from trainer.ml import backbones
    from trainer.ml.inference import compiled_head

    transfer = version.metrics.get("transfer") or {}
    if transfer.get("kept") != "frozen head" or not transfer.get("backbone_key"):
        return predict
    try:
        backbone = backbones.get(version.arch)
        if backbone_key(backbone) != transfer["backbone_key"]:
            return predict  # another file or feature layer under the same name: not this model's features
        features = cached_features(version.job.snapshot, backbone, image_size=version.image_size)
    except backbones.WeightsMissing:
        return predict
    if not features:
        return predict
    return _CachedPredict(features, compiled_head(local_model_file(version)), predict)
