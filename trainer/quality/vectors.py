"""A quality run's vectors and their index as one stored file, named by its SHA-256: the
worker that computed them stores it; a web host copies it to its model cache, checks the
hash once, and keeps the index in memory for "more like this" queries."""

import functools
import hashlib
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from classifier_site.local_cache import cache_touch, cache_trim
from trainer.ml.data_quality import VectorIndex
from trainer.ml.files import sha256_file
from trainer.registry.files import copy_from_storage


class VectorsUnavailable(Exception):
    """The run stored no vectors, or they are gone or damaged."""


def vectors_store(*, dataset_id: int, index: VectorIndex) -> tuple[str, str]:
    """(stored name, SHA-256) of the index written to storage."""
    data = index.to_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return default_storage.save(f"quality/dataset-{dataset_id}/{sha[:16]}.npz", ContentFile(data)), sha


def vectors_load(*, name: str, sha256: str) -> VectorIndex:
    """The stored index, from this host's copy (fetched and verified on first use)."""
    if not name:
        raise VectorsUnavailable("This analysis stored no vectors.")
    return _loaded(name, sha256)


@functools.lru_cache(maxsize=4)  # one per dataset analysed lately: a query then costs a search, not a read
def _loaded(name: str, sha256: str) -> VectorIndex:
    local = Path(settings.MODEL_CACHE_DIR) / "vectors" / f"{sha256}.npz"
    if not local.exists():
        _fetch(name, local)
        if sha256_file(local) != sha256:
            local.unlink(missing_ok=True)
            raise VectorsUnavailable("The stored vectors are damaged (checksum mismatch): analyse the dataset again.")
        cache_trim([local.parent], settings.MODEL_CACHE_MAX_MB * 2**20, keep=[local])
    cache_touch(local)
    return VectorIndex.from_bytes(local.read_bytes())


def _fetch(name: str, local: Path) -> None:
    try:
        copy_from_storage(name, local)
    except OSError as exc:
        raise VectorsUnavailable("The stored vectors are missing: analyse the dataset again.") from exc
