"""Turning a job's frozen snapshot into the arrays trainer.ml trains on."""

import logging
from typing import Any

import numpy as np
from django.core.files.storage import default_storage

from datasets.imaging import ImageRejected, load_array
from datasets.models import Image, Split
from trainer.ml.train import Split as ArraySplit
from trainer.ml.train import TrainData

logger = logging.getLogger(__name__)


def snapshot_arrays(snapshot: dict[str, Any], image_size: int) -> TrainData:
    """Decode every image of the snapshot once, resized to `image_size`, by split."""
    entries = snapshot["images"]
    files = dict(Image.objects.filter(pk__in=[e[0] for e in entries]).values_list("pk", "file"))
    buckets: dict[str, tuple[list[np.ndarray], list[int]]] = {s.value: ([], []) for s in Split}
    for pk, label, split in entries:
        array = _read(files.get(pk), image_size)
        if array is not None:
            buckets[split][0].append(array)
            buckets[split][1].append(label)
    return TrainData(
        classes=list(snapshot["classes"]),
        train=_split(*buckets[Split.TRAIN], image_size),
        val=_split(*buckets[Split.VALIDATION], image_size),
        test=_split(*buckets[Split.TEST], image_size),
    )


def _read(name: str | None, image_size: int) -> np.ndarray | None:
    if name is None:  # deleted since the snapshot was taken
        return None
    try:
        with default_storage.open(name) as fh:
            return load_array(fh.read(), image_size)
    except (OSError, ImageRejected) as exc:
        logger.warning("skipping %s: %s", name, exc)
        return None


def _split(arrays: list[np.ndarray], labels: list[int], image_size: int) -> ArraySplit:
    x = np.stack(arrays) if arrays else np.zeros((0, image_size, image_size, 3), np.uint8)
    return ArraySplit(x=x, y=np.asarray(labels, dtype=np.int64))
