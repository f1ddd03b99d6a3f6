"""Turning a job's frozen snapshot into the arrays trainer.ml trains on.

Images are decoded once per (snapshot hash, image size) into uint8 `.npy` files
under TRAIN_WORK_DIR/arrays; later jobs on the same snapshot and size (another
architecture, "run again", a resumed attempt) memory-map them instead of
decoding again, and a dataset larger than memory streams from the page cache.
"""

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage

from datasets.imaging import ImageRejected, load_array
from datasets.models import Image, Split
from trainer.ml.train import Split as ArraySplit
from trainer.ml.train import TrainData

logger = logging.getLogger(__name__)


def snapshot_arrays(snapshot: dict[str, Any], image_size: int) -> TrainData:
    """The snapshot's images by split, resized to `image_size`, from the cache."""
    entries = snapshot["images"]
    files = dict(Image.objects.filter(pk__in=[e[0] for e in entries]).values_list("pk", "file"))
    folder = cache_folder(snapshot, files, image_size)
    if not (folder / "complete").exists():
        _decode_into(folder, entries, files, image_size)
    else:
        logger.info("decoded images from the cache: %s", folder)

    def split(name: str) -> ArraySplit:
        x = np.load(folder / f"{name}_x.npy", mmap_mode="r")
        return ArraySplit(x=x, y=np.load(folder / f"{name}_y.npy"), ids=np.load(folder / f"{name}_ids.npy"))

    return TrainData(
        classes=list(snapshot["classes"]),
        train=split(Split.TRAIN.value),
        val=split(Split.VALIDATION.value),
        test=split(Split.TEST.value),
    )


def cache_folder(snapshot: dict[str, Any], files: dict[int, str], image_size: int) -> Path:
    """Keyed by the snapshot hash and the stored file names (content hashes), so a
    re-created database reusing image ids can never pick up another's pixels."""
    digest = hashlib.sha256(snapshot["hash"].encode())
    for pk, _, _ in snapshot["images"]:
        digest.update(f"{pk}:{files.get(pk, '')}\n".encode())
    # "v2": the cache layout with image ids beside the pixels; older folders are not read.
    return Path(settings.TRAIN_WORK_DIR) / "arrays" / f"{digest.hexdigest()[:32]}-{image_size}px-v2"


def _decode_into(folder: Path, entries: list[list[Any]], files: dict[int, str], image_size: int) -> None:
    """Decode every image once, then publish the folder with one rename, so a
    crash mid-way leaves no half-written cache behind."""
    by_split: dict[str, list[tuple[int, str | None, int]]] = {s.value: [] for s in Split}
    for pk, label, split in entries:
        by_split[split].append((pk, files.get(pk), label))
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for split, items in by_split.items():
            _write_split(building, split, items, image_size)
        (building / "complete").touch()
        try:
            building.rename(folder)
        except OSError:  # another worker published the same snapshot first
            logger.info("cache %s appeared meanwhile; using it", folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _write_split(folder: Path, split: str, items: list[tuple[int, str | None, int]], image_size: int) -> None:
    # Written straight into a memory-mapped file: never the whole split in memory.
    shape = (len(items), image_size, image_size, 3)
    x = np.lib.format.open_memmap(folder / f"{split}_x.npy", mode="w+", dtype=np.uint8, shape=shape)
    labels: list[int] = []
    ids: list[int] = []  # which image each row is: evaluation reports link back to them
    for pk, name, label in items:
        array = _read(name, image_size)
        if array is not None:
            x[len(labels)] = array
            labels.append(label)
            ids.append(pk)
    x.flush()
    del x
    if len(labels) < len(items):  # skipped images: shrink the file to the rows written
        kept = np.load(folder / f"{split}_x.npy", mmap_mode="r")[: len(labels)]
        np.save(folder / f"{split}_x.tmp.npy", kept)
        (folder / f"{split}_x.tmp.npy").replace(folder / f"{split}_x.npy")
    np.save(folder / f"{split}_y.npy", np.asarray(labels, dtype=np.int64))
    np.save(folder / f"{split}_ids.npy", np.asarray(ids, dtype=np.int64))


def _read(name: str | None, image_size: int) -> np.ndarray | None:
    if name is None:  # deleted since the snapshot was taken
        return None
    try:
        with default_storage.open(name) as fh:
            return load_array(fh.read(), image_size)
    except (OSError, ImageRejected) as exc:
        logger.warning("skipping %s: %s", name, exc)
        return None
