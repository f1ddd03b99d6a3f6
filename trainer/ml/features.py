"""Frozen-backbone features of a snapshot's images, computed once and cached
(no Django here: the caller names the folder, keyed by snapshot, backbone file
and size, so a second job, a scoring run or a similarity search reuses them).

A cache folder holds, per split, `{split}.npy` (float32, (views, n, dim)) and
`{split}_ids.npy` (which image each row is); it is written under a temporary
name and published with one rename, so a crash never leaves half a cache.
"""

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BATCH = 32  # what the ms/image figures were measured at; larger batches gain nothing on a CPU
SPLITS = ("train", "val", "test")
# Progress: (images done, images in all) after each batch.
Progress = Callable[[int, int], None]


@dataclass
class Features:
    """Per split: (views, n, dim) float32, view 0 being the image itself."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    reused: bool = False  # read from the cache, not computed
    fetched: bool = False  # that cache came from another host, through storage

    def split(self, name: str) -> np.ndarray:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def cached_or_computed(
    folder: Path,
    extractor: Callable[[], Any],
    images: dict[str, np.ndarray],
    ids: dict[str, np.ndarray],
    *,
    views: int = 1,
    progress: Progress | None = None,
) -> Features:
    """The features in `folder`, or computed with `extractor()` (built only when needed) and saved there."""
    if _complete(folder, ids, views):
        logger.info("features from the cache: %s", folder)
        train, val, test = (np.load(folder / f"{s}.npy", mmap_mode="r")[: views if s == "train" else 1] for s in SPLITS)
        return Features(train, val, test, reused=True)
    features = compute(extractor(), images, views=views, progress=progress)
    _publish(folder, {s: features.split(s) for s in SPLITS}, ids)
    return features


def compute(model: Any, images: dict[str, np.ndarray], *, views: int = 1, progress: Progress | None = None) -> Features:
    """Every split's features; `views` of the training images, the image alone of the others."""
    total = sum(len(images[s]) * (views if s == "train" else 1) for s in SPLITS)
    counter = _Counter(total, progress)
    train, val, test = (extract(model, images[s], views=views if s == "train" else 1, progress=counter) for s in SPLITS)
    return Features(train, val, test)


def extract(model: Any, images: np.ndarray, *, views: int = 1, progress: "Progress | None" = None) -> np.ndarray:
    """(views, n, dim) float32 features of uint8 (n, size, size, 3) images; view 1 is the mirror."""
    dim = int(model.output.shape[-1])
    out = np.zeros((views, len(images), dim), dtype=np.float32)
    call = traced(model)
    for view in range(views):
        for start in range(0, len(images), BATCH):
            batch = np.asarray(images[start : start + BATCH], dtype=np.float32)
            if view == 1:
                batch = np.ascontiguousarray(batch[:, :, ::-1, :])
            out[view, start : start + len(batch)] = call(batch).numpy()
            if progress:
                progress(len(batch), 0)
    return out


def traced(model: Any) -> Callable[[np.ndarray], Any]:
    """The model's inference call traced once for any batch size: half the time of eager
    calls on a CPU (benchmarks/backbone_speed.py)."""
    import tensorflow as tf

    return tf.function(  # type: ignore[no-any-return]
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *model.input.shape[1:]))]
    )


class _Counter:
    """Adds batch sizes up across splits and views into one (done, total) progress."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, count: int, _: int) -> None:
        self.done += count
        if self.progress:
            self.progress(self.done, self.total)


def _complete(folder: Path, ids: dict[str, np.ndarray], views: int) -> bool:
    if not (folder / "complete").exists():
        return False
    for split in SPLITS:
        cached = np.load(folder / f"{split}_ids.npy")
        stored_views = np.load(folder / f"{split}.npy", mmap_mode="r").shape[0]
        needed = views if split == "train" else 1
        if not np.array_equal(cached, ids[split]) or stored_views < needed:
            return False  # other images (a rebuilt image cache skipped different files) or fewer views
    return True


def _publish(folder: Path, computed: dict[str, np.ndarray], ids: dict[str, np.ndarray]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for split in SPLITS:
            np.save(building / f"{split}.npy", computed[split])
            np.save(building / f"{split}_ids.npy", ids[split])
        (building / "complete").touch()
        if folder.exists():  # stale (fewer views or other images): replaced whole
            shutil.rmtree(folder, ignore_errors=True)
        try:
            building.rename(folder)
        except OSError:
            logger.info("feature cache %s appeared meanwhile; using ours this time", folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
