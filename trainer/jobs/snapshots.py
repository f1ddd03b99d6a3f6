"""Turning a job's frozen snapshot into the arrays and features trainer.ml trains on.

Images are decoded once per (snapshot hash, image size) into uint8 `.npy` files
under TRAIN_WORK_DIR/arrays, at the training size (large JPEGs decode at a
reduced DCT scale); later jobs on the same snapshot and size (another
architecture, "run again", a resumed attempt) memory-map them instead of
decoding again, and a dataset larger than memory streams from the page cache.
Frozen-backbone features are cached the same way under TRAIN_WORK_DIR/features,
keyed by the image cache, the backbone file's SHA-256 and the size, and shared with
other hosts through storage (trainer.jobs.feature_store).
"""

import functools
import hashlib
import logging
import shutil
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage

from classifier_site.local_cache import cache_touch, cache_trim
from datasets.imaging import ImageRejected, load_array
from datasets.models import Image, Split
from trainer.jobs.feature_store import features_fetch, features_store
from trainer.ml.backbones import Backbone, feature_extractor, installed_path
from trainer.ml.features import Features, Progress, cached_or_computed
from trainer.ml.files import sha256_file
from trainer.ml.recipe import DataStats
from trainer.ml.train import Split as ArraySplit
from trainer.ml.train import TrainData

GREYSCALE_SAMPLE = 64  # images decoded to tell greyscale data from colour

logger = logging.getLogger(__name__)


def snapshot_arrays(snapshot: dict[str, Any], image_size: int, progress: Progress | None = None) -> TrainData:
    """The snapshot's images by split, resized to `image_size`, from the cache;
    `progress(done, total)` after each image decoded."""
    entries = snapshot["images"]
    files = dict(Image.objects.filter(pk__in=[e[0] for e in entries]).values_list("pk", "file"))
    folder = cache_folder(snapshot, files, image_size)
    if not (folder / "complete").exists():
        _decode_into(folder, entries, files, image_size, progress)
    else:
        logger.info("decoded images from the cache: %s", folder)
    _used(folder)

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
    # "v3": large JPEGs decoded with Pillow's draft, as serving now does; older folders are not read.
    return Path(settings.TRAIN_WORK_DIR) / "arrays" / f"{digest.hexdigest()[:32]}-{image_size}px-v3"


def _decode_into(
    folder: Path, entries: list[list[Any]], files: dict[int, str], image_size: int, progress: Progress | None
) -> None:
    """Decode every image once, then publish the folder with one rename, so a
    crash mid-way leaves no half-written cache behind."""
    by_split: dict[str, list[tuple[int, str | None, int]]] = {s.value: [] for s in Split}
    for pk, label, split in entries:
        by_split[split].append((pk, files.get(pk), label))
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        done = [0, len(entries)]

        def decoded() -> None:
            done[0] += 1
            if progress:
                progress(done[0], done[1])

        for split, items in by_split.items():
            _write_split(building, split, items, image_size, decoded)
        (building / "complete").touch()
        try:
            building.rename(folder)
        except OSError:  # another worker published the same snapshot first
            logger.info("cache %s appeared meanwhile; using it", folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _write_split(
    folder: Path, split: str, items: list[tuple[int, str | None, int]], image_size: int, decoded: Callable[[], None]
) -> None:
    # Written straight into a memory-mapped file: never the whole split in memory.
    shape = (len(items), image_size, image_size, 3)
    x = np.lib.format.open_memmap(folder / f"{split}_x.npy", mode="w+", dtype=np.uint8, shape=shape)
    labels: list[int] = []
    ids: list[int] = []  # which image each row is: evaluation reports link back to them
    # Pillow and file reads release the GIL: decode on every core, in order.
    pool = ThreadPoolExecutor(max_workers=settings.IMPORT_THREADS)
    try:
        arrays = pool.map(functools.partial(_read, image_size=image_size), (name for _, name, _ in items))
        for (pk, _, label), array in zip(items, arrays, strict=True):
            decoded()  # may raise (a cancel): the images not yet read are dropped, not waited for
            if array is not None:
                x[len(labels)] = array
                labels.append(label)
                ids.append(pk)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    x.flush()
    del x
    if len(labels) < len(items):  # skipped images: shrink the file to the rows written
        kept = np.load(folder / f"{split}_x.npy", mmap_mode="r")[: len(labels)]
        np.save(folder / f"{split}_x.tmp.npy", kept)
        (folder / f"{split}_x.tmp.npy").replace(folder / f"{split}_x.npy")
    np.save(folder / f"{split}_y.npy", np.asarray(labels, dtype=np.int64))
    np.save(folder / f"{split}_ids.npy", np.asarray(ids, dtype=np.int64))


def _read(name: str | None, image_size: int) -> np.ndarray | None:
    # Every image at the training size, once: large JPEGs decode at a reduced scale (Pillow's draft).
    if name is None:  # deleted since the snapshot was taken
        return None
    try:
        with default_storage.open(name) as fh:
            return load_array(fh.read(), image_size)
    except (OSError, ImageRejected) as exc:
        logger.warning("skipping %s: %s", name, exc)
        return None


def snapshot_stats(snapshot: dict[str, Any]) -> DataStats:
    """What `auto` decides on: counts per class and the images' sizes (from their
    rows), and whether a sample of them is greyscale."""
    entries = snapshot["images"]
    rows = list(Image.objects.filter(pk__in=[e[0] for e in entries]).values_list("width", "height", "file"))
    sides = [min(w, h) for w, h, _ in rows if w and h] or [0]
    per_class = Counter(label for _, label, _ in entries)
    sample = [name for _, _, name in rows[:: max(len(rows) // GREYSCALE_SAMPLE, 1)]][:GREYSCALE_SAMPLE]
    return DataStats(
        images=len(entries),
        classes=len(snapshot["classes"]),
        median_per_class=float(statistics.median(per_class.values())) if per_class else 0.0,
        median_side=float(statistics.median(sides)),
        greyscale=_greyscale(sample),
    )


def _greyscale(names: list[str]) -> bool:
    arrays = [a for a in (_read(name, 32) for name in names) if a is not None]
    return bool(arrays) and all(bool((a == a[..., :1]).all()) for a in arrays)


def snapshot_features(
    snapshot: dict[str, Any],
    data: TrainData,
    backbone: Backbone,
    *,
    image_size: int,
    views: int = 1,
    progress: Progress | None = None,
) -> Features:
    """The backbone's features of the snapshot's decoded images, from the cache or computed once."""
    folder = features_folder(snapshot, backbone, image_size=image_size)
    fetched = not (folder / "complete").exists() and features_fetch(folder, snapshot["hash"])
    splits = {"train": data.train, "val": data.val, "test": data.test}
    features = cached_or_computed(
        folder,
        lambda: feature_extractor(backbone, image_size),
        {name: split.x for name, split in splits.items()},
        {name: split.ids if split.ids is not None else np.arange(len(split)) for name, split in splits.items()},
        views=views,
        progress=progress,
    )
    if not features.reused:
        features_store(folder, snapshot["hash"])
    _used(folder)
    return replace(features, fetched=fetched and features.reused)


def _used(folder: Path) -> None:
    """`folder` was just used: it goes last when the host's cache is past its budget."""
    cache_touch(folder)


def training_cache_trim() -> list[Path]:
    """Fit the host's decoded-image and feature caches to TRAIN_CACHE_MAX_MB. Once a job has
    both its folders (just used, so kept): trimming after the images alone could evict the
    features the job is about to read."""
    work = Path(settings.TRAIN_WORK_DIR)
    return cache_trim([work / "arrays", work / "features"], settings.TRAIN_CACHE_MAX_MB * 2**20)


def cached_features(snapshot: dict[str, Any], backbone: Backbone, *, image_size: int) -> dict[int, np.ndarray]:
    """Features a job on `snapshot` left in this host's cache or in storage (fetched here
    then), by image id ({} when there are none)."""
    folder = features_folder(snapshot, backbone, image_size=image_size)
    if not (folder / "complete").exists() and not features_fetch(folder, snapshot["hash"]):
        return {}
    _used(folder)
    found: dict[int, np.ndarray] = {}
    for split in ("train", "val", "test"):
        rows = np.load(folder / f"{split}.npy", mmap_mode="r")[0]
        found.update(zip(np.load(folder / f"{split}_ids.npy").tolist(), rows, strict=True))
    return found


def features_folder(snapshot: dict[str, Any], backbone: Backbone, *, image_size: int) -> Path:
    """Keyed by the decoded-image cache (snapshot, files, size) and the backbone file's SHA-256:
    another snapshot or another backbone file never reads these features."""
    files = dict(Image.objects.filter(pk__in=[e[0] for e in snapshot["images"]]).values_list("pk", "file"))
    images = cache_folder(snapshot, files, image_size).name
    return Path(settings.TRAIN_WORK_DIR) / "features" / f"{images}-{backbone.name}-{backbone_key(backbone)}"


def backbone_key(backbone: Backbone) -> str:
    """The file's SHA-256 and what its manifest says of it (feature layer, preprocessing):
    the same file reinstalled with another feature layer gives other features."""
    how = f"{backbone_sha256(backbone)}:{backbone.feature_layer}:{backbone.preprocessing}"
    return hashlib.sha256(how.encode()).hexdigest()[:16]


def backbone_sha256(backbone: Backbone) -> str:
    """The installed file's SHA-256, remembered while the file is unchanged."""
    path = installed_path(backbone)
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))
