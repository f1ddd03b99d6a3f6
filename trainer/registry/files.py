"""A model version's file: stored once under its content's name, verified by its
SHA-256 and copied locally before anything loads it. Training stores, serving,
scoring, evaluation and exports read through here; nothing else opens model files."""

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from trainer.ml.files import sha256_file
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
    if sha256_file(cache) != version.sha256:
        cache.unlink(missing_ok=True)
        raise NoModelAvailable(f"Model file of version {version.pk} is damaged (checksum mismatch).")
    return cache
