"""One analysis on a worker (trainer.quality.services runs it): the dataset's vectors,
their stored index, and the findings, written onto the Image rows and into the report."""

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from classifier_site.errors import Refused
from datasets.models import Dataset, Image
from datasets.selectors import IMBALANCE_RATIO, MIN_IMAGES_PER_CLASS, image_pixels
from trainer.ml import backbones
from trainer.ml import data_quality as dq
from trainer.ml.backbones import Backbone
from trainer.models import ModelVersion, QualityRun

logger = logging.getLogger(__name__)

BATCH = 64  # images per backbone call and per progress write
OUTLIER_SHARE = 0.03  # of the images, the most unusual flagged as outliers (none under 34 images)
CLEARED = {"label_issue_quality": None, "label_issue_suggestion": "", "outlier_score": None}
# Progress: writes these fields on the run while it is still running; False once it is not.
StillRunning = Callable[..., bool]


class QualityRefused(Refused):
    """An analysis cannot start, or an action on its findings cannot be done; the message says why."""


class RunLost(Exception):
    """The run is no longer this worker's: deleted, or failed as stale meanwhile."""


def choose_backbone(dataset: Dataset, name: str = "") -> Backbone:
    """`name` if installed; else the backbone of the dataset's latest transfer-learning
    version (its features may be cached); else the strongest installed for a CPU."""
    if name:
        try:
            backbone = backbones.get(name)
            backbones.installed_path(backbone)
        except backbones.WeightsMissing as exc:
            raise QualityRefused(str(exc)) from None
        return backbone
    installed = {b.name: b for b in backbones.installed()}
    for arch in ModelVersion.objects.filter(dataset=dataset).values_list("arch", flat=True)[:20]:
        if arch in installed:
            return installed[arch]
    from trainer.ml.recipe import strongest

    best = strongest(list(installed.values()), dataset.images.count(), on_gpu=False)
    if best is None:
        raise QualityRefused("No backbone is installed: `manage.py fetch_weights` installs one (see the README).")
    return best


def analyse(run: QualityRun, *, still_running: StillRunning) -> dict[str, Any]:
    """Every image's vector, the stored index, the findings; the run's fields to finish with."""
    from trainer.quality.vectors import vectors_store

    computer = _Computer(backbones.get(run.backbone), run.image_size)
    ids, vectors = _vectors(run, computer, still_running)
    index = dq.VectorIndex.build(vectors, ids)
    name, sha = vectors_store(dataset_id=run.dataset_id, index=index)
    extractor = _extractor(run, computer, ids)
    report = {"backbone": run.backbone, "vectors": len(ids), "index": "exact" if index.exact else "hnsw",
              **_findings(run.dataset, index)}  # fmt: skip
    if not still_running(heartbeat_at=timezone.now()):
        raise RunLost
    return {"index_file": name, "index_sha256": sha, "report": report, **extractor}


def _vectors(run: QualityRun, computer: "_Computer", still_running: StillRunning) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, vectors) of every readable image: from a training job's feature cache
    where it holds them, through the backbone otherwise."""
    backbone = computer.backbone
    cached = _training_features(run.dataset, backbone, run.image_size)
    images = list(Image.objects.filter(dataset=run.dataset).order_by("pk").only("pk", "file"))
    if not still_running(total=len(images), heartbeat_at=timezone.now()):
        raise RunLost
    ids: list[int] = []
    rows: list[np.ndarray] = []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        found = computer.vectors([i for i in batch if i.pk not in cached])
        found.update({i.pk: cached[i.pk] for i in batch if i.pk in cached})
        for image in batch:
            if image.pk in found:
                ids.append(image.pk)
                rows.append(found[image.pk])
        progress = {"processed": F("processed") + len(batch), "skipped": F("skipped") + len(batch) - len(found),
                    "reused": F("reused") + sum(i.pk in cached for i in batch)}  # fmt: skip
        if not still_running(heartbeat_at=timezone.now(), **progress):
            raise RunLost
    dim = backbone.feature_dim
    return np.asarray(ids, dtype=np.int64), (np.stack(rows) if rows else np.zeros((0, dim), np.float32))


class _Computer:
    """The backbone, built at its first use (a dataset whose vectors are all cached needs
    it only for the extractor file)."""

    def __init__(self, backbone: Backbone, size: int) -> None:
        self.backbone, self.size = backbone, size
        self._model: Any = None
        self.call: Callable[[np.ndarray], Any] | None = None

    def model(self) -> Any:
        if self._model is None:
            from trainer.ml.backbones import feature_extractor

            self._model = feature_extractor(self.backbone, self.size)
        return self._model

    def vectors(self, images: list[Image]) -> dict[int, np.ndarray]:
        readable = [(image.pk, pixels) for image in images if (pixels := image_pixels(image, self.size)) is not None]
        if not readable:
            return {}
        if self.call is None:
            from trainer.ml.features import traced

            self.call = traced(self.model())
        out = self.call(np.stack([p for _, p in readable]).astype(np.float32)).numpy()
        return {pk: out[row] for row, (pk, _) in enumerate(readable)}


def _extractor(run: QualityRun, computer: _Computer, ids: np.ndarray) -> dict[str, str]:
    """The run's fields for its stored ONNX extractor (what "more like this" from an
    uploaded image runs in a web process); none, and why in the log, when it cannot be had."""
    import tempfile
    from pathlib import Path

    from trainer.ml.extractor import SAMPLES, write_extractor
    from trainer.quality.vectors import extractor_store

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "extractor.onnx"
        try:
            write_extractor(computer.model(), _sample_pixels(ids[:SAMPLES], run.image_size), out)
        except Exception as exc:  # drift, or whatever tf2onnx raises for an op it lacks: an extra, never the run
            logger.warning("quality run %s: no extractor for uploads: %s", run.pk, exc)
            return {}
        name, sha = extractor_store(dataset_id=run.dataset_id, path=out)
    return {"extractor_file": name, "extractor_sha256": sha}


def _sample_pixels(ids: np.ndarray, size: int) -> np.ndarray:
    """The readable ones of these images as a model sees them (uint8, n x size x size x 3)."""
    found = [p for image in Image.objects.filter(pk__in=ids.tolist()) if (p := image_pixels(image, size)) is not None]
    return np.stack(found) if found else np.zeros((0, size, size, 3), np.uint8)


def _training_features(dataset: Dataset, backbone: Backbone, size: int) -> dict[int, np.ndarray]:
    """Vectors the newest transfer-learning job on this backbone and size computed, by image id."""
    from trainer.jobs.snapshots import backbone_key, cached_features

    key = backbone_key(backbone)
    versions = ModelVersion.objects.filter(dataset=dataset, arch=backbone.name, image_size=size).select_related("job")
    for version in versions[:5]:
        if (version.metrics.get("transfer") or {}).get("backbone_key") != key or not version.job.snapshot:
            continue  # another file or feature layer under the same name, or no snapshot to find them by
        if found := cached_features(version.job.snapshot, backbone, image_size=size):
            return found
    return {}


def _findings(dataset: Dataset, index: dq.VectorIndex) -> dict[str, Any]:
    """Near-duplicate groups, label issues, outliers and small classes (on the index's
    rows: centred, length 1); the per-image ones written onto the Image rows (an older
    analysis's are cleared first)."""
    labelled = dict(
        Image.objects.filter(dataset=dataset, label__isnull=False).values_list("pk", "label__name").iterator()
    )
    counts = Counter(labelled.values())
    ids, rows = index.ids, index.rows()
    issues, disagreeing, checked = _label_issues(ids, rows, labelled)
    outliers = _outliers(ids, rows, labelled)
    flagged = [Image(pk=pk, label_issue_quality=issues[pk][0] if pk in issues else None,
                     label_issue_suggestion=issues[pk][1] if pk in issues else "", outlier_score=outliers.get(pk))
               for pk in issues.keys() | outliers.keys()]  # fmt: skip
    with transaction.atomic():
        Image.objects.filter(dataset=dataset).update(**CLEARED)
        Image.objects.bulk_update(flagged, list(CLEARED), batch_size=500)
    # The dataset page's thresholds, so that both name the same classes.
    small = dq.small_classes(dict(counts), minimum=MIN_IMAGES_PER_CLASS, share=1 / IMBALANCE_RATIO)
    return {
        "groups": dq.near_duplicate_groups(index),
        "label_issues": len(issues),
        "disagreements": disagreeing,
        "labels_checked": checked,
        "outliers": list(outliers),
        "small_classes": [c.__dict__ for c in small],
    }


def _label_issues(
    ids: np.ndarray, rows: np.ndarray, labelled: dict[int, str]
) -> tuple[dict[int, tuple[float, str]], int, int]:
    """Confident learning over the labelled images of classes with two or more:
    ({image id: (label quality, suggested class)}, how many the plain "model disagrees" rule
    flags, how many labels were checked)."""
    readable = Counter(labelled[pk] for pk in ids.tolist() if pk in labelled)
    classes = sorted(name for name, n in readable.items() if n >= 2)
    if len(classes) < 2:
        return {}, 0, 0
    number = {name: i for i, name in enumerate(classes)}
    positions = [p for p, pk in enumerate(ids.tolist()) if labelled.get(pk) in number]
    labels = np.array([number[labelled[int(ids[p])]] for p in positions])
    probabilities = dq.out_of_fold_probabilities(rows[positions], labels)
    found = {
        int(ids[positions[issue.position]]): (issue.quality, classes[issue.suggested])
        for issue in dq.label_issues(labels, probabilities)
    }
    return found, len(dq.disagreements(labels, probabilities)), len(positions)


def _outliers(ids: np.ndarray, rows: np.ndarray, labelled: dict[int, str]) -> dict[int, float]:
    """The most unusual OUTLIER_SHARE of the images, most unusual first, with how like
    their nearest class they are (-1..1)."""
    count = int(len(ids) * OUTLIER_SHARE)
    if count == 0:
        return {}
    number = {name: i for i, name in enumerate(sorted(set(labelled.values())))}
    classes = np.array([number.get(labelled.get(pk, ""), -1) for pk in ids.tolist()])
    scores = dq.outlier_scores(rows, classes)
    ranked = np.argsort(scores, kind="stable")[:count]
    return {int(ids[p]): float(scores[p]) for p in ranked}
