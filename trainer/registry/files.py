"""A model version's file: stored once under its content's name, verified by its
SHA-256 and copied locally before anything loads it. Training stores, serving,
scoring, evaluation and exports read through here; nothing else opens model files.
Also the version's own test images, which a serving runtime is checked on."""

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from classifier_site.local_cache import cache_touch, cache_trim
from datasets.imaging import ImageRejected, load_array
from datasets.models import Image, Split
from trainer.ml.files import sha256_file
from trainer.ml.runtimes import ONNX_FILE, check_record_path
from trainer.models import ModelVersion


@dataclass(frozen=True)
class StoredFile:
    name: str  # in default_storage
    sha256: str
    size: int


def model_file_store(*, path: Path, job_id: int) -> StoredFile:
    """Store a trained model file under a name made of its SHA-256. The storage writes a
    temporary name, fsyncs and renames it into place (classifier_site.storage), so a
    version row only ever points at a whole file."""
    sha = sha256_file(path)
    with path.open("rb") as fh:
        name = default_storage.save(f"models/job-{job_id}/{sha[:16]}.keras", File(fh))
    return StoredFile(name=name, sha256=sha, size=path.stat().st_size)


def serving_files_store(*, model_dir: Path, stored: StoredFile) -> tuple[str, str]:
    """Store the training worker's ONNX conversion and its check record beside the
    model file (trainer.ml.runtimes.prepare_serving); ("", "") when it made none."""
    onnx = model_dir / ONNX_FILE
    record = check_record_path(onnx)
    if not (onnx.exists() and record.exists()):
        return "", ""
    stem = stored.name.removesuffix(".keras")
    names = []
    for path, name in ((onnx, f"{stem}.onnx"), (record, f"{stem}.onnx.check.npz")):
        with path.open("rb") as fh:
            names.append(default_storage.save(name, File(fh)))
    return names[0], names[1]


def local_serving_files(version: ModelVersion, onnx_path: Path) -> bool:
    """Copy the version's stored ONNX file and check record to `onnx_path` (and beside
    it) unless they are there; False when the version has none or they cannot be read
    (the web process then converts for itself)."""
    record = check_record_path(onnx_path)
    if onnx_path.exists() and record.exists():
        return True
    if not (version.onnx_file and version.onnx_check_file):
        return False
    try:
        for name, target in ((version.onnx_check_file, record), (version.onnx_file, onnx_path)):
            copy_from_storage(name, target)
    except OSError:
        return False
    return True


def copy_from_storage(name: str, target: Path) -> None:
    """Under a temporary name, renamed into place: a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{threading.get_ident()}.partial")
    try:
        with default_storage.open(name) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


class NoModelAvailable(Exception):
    """No version is promoted yet, or the promoted one cannot be loaded."""


def local_model_file(version: ModelVersion) -> Path:
    """A verified local file of the version: storage may be remote, and files can rot.
    Only files the site stored for a version row are ever loaded: no path or URL
    from a client reaches here."""
    cache = Path(settings.MODEL_CACHE_DIR) / f"{version.sha256}.keras"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{threading.get_ident()}.partial")
        try:
            with default_storage.open(str(version.file.name)) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise NoModelAvailable(f"Model file of version {version.pk} is missing.") from exc
        partial.replace(cache)
        cache_trim([cache.parent], settings.MODEL_CACHE_MAX_MB * 2**20, keep=[cache])
    if sha256_file(cache) != version.sha256:
        cache.unlink(missing_ok=True)
        raise NoModelAvailable(f"Model file of version {version.pk} is damaged (checksum mismatch).")
    cache_touch(cache)
    return cache


def model_version_samples(version: ModelVersion, *, limit: int) -> np.ndarray:
    """Up to `limit` of the version's own test images (from its job's snapshot) at its
    input size, uint8: what a serving runtime is checked against Keras on. Images
    that are gone or unreadable are skipped; a version with none left (or a snapshot
    without a test split) gets seeded noise instead, which checks the arithmetic too."""
    test_ids = [pk for pk, _label, split in version.job.snapshot.get("images", []) if split == Split.TEST][:limit]
    files = Image.objects.filter(pk__in=test_ids).values_list("file", flat=True)
    size, arrays = version.image_size, []
    for name in files:
        try:
            with default_storage.open(name) as fh:
                arrays.append(load_array(fh.read(), size, max_pixels=settings.MAX_IMAGE_PIXELS))
        except (OSError, ImageRejected):
            continue
    if arrays:
        return np.stack(arrays)
    return np.random.default_rng(version.pk).integers(0, 256, (min(limit, 8), size, size, 3), dtype=np.uint8)
