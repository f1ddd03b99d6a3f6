"""Learning from production, opted into per dataset: after answering, the predict API and
page keep a sample of the live answers (every one below the rejection threshold, a share
of the others) with their image, which lands in the dataset unlabelled, carrying the
model's answer as its suggestion, so the workbench's "least confident first" puts it
first in the labelling queue. With the option off nothing is kept.

Each kept answer is a LivePrediction row (the drift panel reads them, weighted back to
all answers); its image is kept while unlabelled for CAPTURE_RETENTION_DAYS and at most
CAPTURE_MAX_IMAGES per dataset (the oldest go first; a labelled one is the dataset's
now). Keeping one costs its request an import of one image; answering never fails
because of it.
"""

import logging
import random
import threading
import time
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from classification.drift import waiting_for_label
from classification.models import LiveCapture, LivePrediction
from classification.predictor import Prediction
from classifier_site.errors import Refused
from datasets.models import Dataset, Image
from datasets.services import image_add_or_get, images_delete

logger = logging.getLogger(__name__)

SETTINGS_SECONDS = 10.0  # how long a web process trusts what it read of a dataset's opt-in
EXPIRE_SECONDS = 600.0  # how often a web process that keeps answers also drops the expired ones

_lock = threading.Lock()
_read: dict[int, tuple[float, bool, float]] = {}  # dataset id -> (read at, enabled, share)
_expired_at: dict[int, float] = {}  # dataset id -> when this process last dropped expired images


def capture_set(*, dataset: Dataset, enabled: bool, share: float) -> LiveCapture:
    """Turn learning from production on or off for `dataset`, keeping `share` (0..1) of the
    confident answers."""
    if not 0.0 <= share <= 1.0:
        raise Refused("The share of confident answers to keep is a fraction from 0 to 1 (0.05 keeps 1 in 20).")
    capture, _ = LiveCapture.objects.update_or_create(dataset=dataset, defaults={"enabled": enabled, "share": share})
    with _lock:
        _read.pop(dataset.pk, None)
    return capture


def capture_answers(predictions: Sequence[Prediction], images: Sequence[tuple[str, bytes]]) -> int:
    """Keep the sampled answers of datasets that opted in (called after answering); how
    many were kept. Any failure is logged, never raised: the answer has been given."""
    try:
        return sum(_capture(p, name, data) for p, (name, data) in zip(predictions, images, strict=True))
    except Exception:
        logger.exception("learning from production: answers not kept")
        return 0


def _capture(prediction: Prediction, name: str, data: bytes) -> bool:
    dataset_id = prediction.version.dataset_id
    enabled, share = _settings(dataset_id)
    if not enabled or not (prediction.is_unknown or random.random() < share):
        return False
    dataset = prediction.version.dataset
    image = _kept_image(dataset, name, data, prediction) if _room(dataset_id) else None
    best = prediction.scores[0]
    LivePrediction.objects.create(
        dataset_id=dataset_id, model_version=prediction.version, image=image, label=best.label,
        confidence=best.probability, unknown=prediction.is_unknown,
        weight=1.0 if prediction.is_unknown else 1.0 / share,
    )  # fmt: skip
    _expire_now_and_then(dataset)
    return True


def _settings(dataset_id: int) -> tuple[bool, float]:
    now = time.monotonic()
    with _lock:
        cached = _read.get(dataset_id)
    if cached is not None and now - cached[0] < SETTINGS_SECONDS:
        return cached[1], cached[2]
    row = LiveCapture.objects.filter(dataset_id=dataset_id).values_list("enabled", "share").first()
    enabled, share = row if row is not None else (False, 0.0)
    with _lock:
        _read[dataset_id] = (now, enabled, share)
    return enabled, share


def _room(dataset_id: int) -> bool:
    """Fewer than CAPTURE_MAX_IMAGES kept images still wait for a label."""
    return waiting_for_label(dataset_id).count() < settings.CAPTURE_MAX_IMAGES


def _kept_image(dataset: Dataset, name: str, data: bytes, prediction: Prediction) -> Image | None:
    """The image in the dataset, unlabelled, the answer as its suggestion (an image the
    dataset holds already is linked, not changed); None when the import refused it."""
    try:
        image, added = image_add_or_get(dataset=dataset, filename=f"live-{name or 'image'}", data=data)
    except ValueError:
        return None
    if added:
        best, second = prediction.scores[0], prediction.scores[1] if len(prediction.scores) > 1 else None
        Image.objects.filter(pk=image.pk).update(
            suggestion=best.label, suggestion_confidence=best.probability, suggestion_version=prediction.version.pk,
            suggestion_margin=best.probability - (second.probability if second else 0.0), suggestion_entropy=None,
        )  # fmt: skip
    return image


def _expire_now_and_then(dataset: Dataset) -> None:
    now = time.monotonic()
    with _lock:
        if now - _expired_at.get(dataset.pk, float("-inf")) < EXPIRE_SECONDS:
            return
        _expired_at[dataset.pk] = now
    captures_expire(dataset=dataset)


def captures_expire(*, dataset: Dataset) -> int:
    """Delete the kept images still unlabelled after CAPTURE_RETENTION_DAYS, and the oldest
    beyond CAPTURE_MAX_IMAGES; how many went (their answers stay, for the drift panel)."""
    cutoff = timezone.now() - timedelta(days=settings.CAPTURE_RETENTION_DAYS)
    waiting = waiting_for_label(dataset.pk).order_by("-created_at", "-id")
    old = set(waiting.filter(created_at__lt=cutoff).values_list("image_id", flat=True))
    over = set(waiting.values_list("image_id", flat=True)[settings.CAPTURE_MAX_IMAGES :])
    if not (old | over):
        return 0
    with transaction.atomic():
        return images_delete(dataset=dataset, ids=old | over)
