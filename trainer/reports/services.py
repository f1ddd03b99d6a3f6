"""Services that write evaluation reports: the one a job writes when it finishes,
and later ones from `evaluate` (a model version on a dataset's test split).

Drawing charts imports seaborn (and pyplot with it), so only workers and
management commands call into here; web processes read reports through
trainer.reports.selectors.
"""

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from datasets.models import Dataset, Image
from datasets.selectors import dataset_snapshot
from trainer.models import Evaluation, ModelVersion, Prediction

if TYPE_CHECKING:  # trainer.ml.train loads TensorFlow
    from trainer.ml.train import Split as ArraySplit

logger = logging.getLogger(__name__)

BULK_BATCH = 2000


@dataclass(frozen=True)
class Predictions:
    """The served model's answers on one split, row by row."""

    image_ids: np.ndarray  # (n,) stored image ids
    true_indices: np.ndarray  # (n,) class indices
    probabilities: np.ndarray  # (n, classes)

    @classmethod
    def of(cls, split: "ArraySplit", probabilities: np.ndarray | None) -> "Predictions":
        """A snapshot split's rows (which carry their image ids) and the answers for them."""
        if split.ids is None or probabilities is None:
            raise ValueError("predictions need the split's image ids and the model's probabilities")
        return cls(split.ids, split.y, probabilities)


def evaluation_record(
    *,
    version: ModelVersion,
    dataset: Dataset,
    split: str,
    metrics: dict,
    predictions: Predictions,
    charts: dict[str, str] | None = None,
) -> Evaluation:
    """Store a report: metrics, every prediction, and the PNG charts. A caller
    inside a transaction passes `charts` drawn beforehand, keeping it short."""
    classes = list(version.classes)
    if charts is None:
        charts = evaluation_charts(metrics, classes, prefix=f"evaluations/model-{version.pk}")
    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            model_version=version, dataset=dataset, split=split, metrics=metrics, classes=classes, **charts
        )
        _store_predictions(evaluation, predictions)
    logger.info("evaluation %s of model %s: accuracy %s", evaluation.pk, version.pk, metrics.get("accuracy"))
    return evaluation


def evaluation_charts(metrics: dict, classes: list[str], *, prefix: str) -> dict[str, str]:
    """Draw and store the report's PNGs; their file names by Evaluation field."""
    from trainer.reports.charts import confusion_heatmap, reliability_diagram

    if not metrics.get("count"):
        return {}
    matrix = metrics["confusion_matrix"]
    pictures = {
        "confusion_png": confusion_heatmap(matrix, classes, normalized=False),
        "confusion_normalized_png": confusion_heatmap(matrix, classes, normalized=True),
        "reliability_png": reliability_diagram(metrics["calibration"]),
    }
    unique = uuid.uuid4().hex[:12]  # a re-evaluation never overwrites an earlier report's pictures
    return {
        field: default_storage.save(f"{prefix}/{unique}-{field.removesuffix('_png')}.png", ContentFile(png))
        for field, png in pictures.items()
    }


def _store_predictions(evaluation: Evaluation, predictions: Predictions) -> None:
    probabilities = np.asarray(predictions.probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=int)
    # An image deleted since its snapshot was taken keeps its row, without the link. (Read by
    # dataset, not `pk__in`: a large test split would pass SQLite's limit on query parameters.)
    existing = set(Image.objects.filter(dataset_id=evaluation.dataset_id).values_list("pk", flat=True))
    rows = (
        Prediction(
            evaluation=evaluation,
            image_id=int(image_id) if int(image_id) in existing else None,
            true_index=int(truth),
            predicted_index=int(guess),
            confidence=float(row[guess]),
            probabilities=[round(float(p), 5) for p in row],
        )
        for image_id, truth, guess, row in zip(
            predictions.image_ids, predictions.true_indices, predicted, probabilities, strict=True
        )
    )
    batch: list[Prediction] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BULK_BATCH:
            Prediction.objects.bulk_create(batch)
            batch = []
    if batch:
        Prediction.objects.bulk_create(batch)


class EvaluationError(Exception):
    """Why a model cannot be evaluated on a dataset, in words for the user."""


def evaluation_run(*, version: ModelVersion, dataset: Dataset, batch_size: int = 256) -> Evaluation:
    """Evaluate `version` afresh on `dataset`'s current test split (a newly
    imported test set, say). Images of classes the model does not know are left
    out and counted. Loads TensorFlow: workers and commands only."""
    import keras

    import trainer.ml.layers  # noqa: F401  registers the custom layers saved in model files
    from trainer.jobs.snapshots import snapshot_arrays
    from trainer.ml.metrics import report
    from trainer.ml.train import predict
    from trainer.registry.files import local_model_file

    snapshot, unknown = _test_snapshot(version, dataset)
    data = snapshot_arrays(snapshot, version.image_size)
    model = keras.saving.load_model(local_model_file(version), compile=False)
    probabilities = predict(model, data.test, len(version.classes), batch_size)
    metrics = report(data.test.y, probabilities, list(version.classes))
    metrics.update(evaluated_on="test", other_classes_left_out=unknown, snapshot_hash=snapshot["hash"])
    predictions = Predictions.of(data.test, probabilities)
    return evaluation_record(version=version, dataset=dataset, split="test", metrics=metrics, predictions=predictions)


def _test_snapshot(version: ModelVersion, dataset: Dataset) -> tuple[dict, int]:
    """The dataset's labelled test images under the model's class indices, and how
    many were left out for having a class the model was not trained on."""
    frozen = dataset_snapshot(dataset=dataset)
    index = {name: i for i, name in enumerate(version.classes)}
    tests = [(pk, frozen.classes[label]) for pk, label, split in frozen.images if split == "test"]
    images = [[pk, index[name], "test"] for pk, name in tests if name in index]
    if not images:
        raise EvaluationError(
            f"{dataset.name} has no labelled test images of the model's classes ({', '.join(version.classes)})."
        )
    digest = hashlib.sha256(f"{frozen.hash}\n{json.dumps(version.classes)}".encode()).hexdigest()
    return {"classes": list(version.classes), "images": images, "hash": digest}, len(tests) - len(images)
