"""A quality run's stored files, each named by its SHA-256: its vectors and their index
(one file), and its backbone as an ONNX extractor (trainer.ml.extractor). The worker that
computed them stores them; a web host copies them to its model cache, checks the hash
once, and keeps them in memory for "more like this" queries, from an indexed image or
from an uploaded one."""

import functools
import hashlib
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from classifier_site.local_cache import cache_touch, cache_trim
from trainer.ml.data_quality import VectorIndex
from trainer.ml.extractor import Extract, extractor_load
from trainer.ml.files import sha256_file
from trainer.registry.files import copy_from_storage


class VectorsUnavailable(Exception):
    """The run stored no vectors, or they are gone or damaged."""


def vectors_store(*, dataset_id: int, index: VectorIndex) -> tuple[str, str]:
    """(stored name, SHA-256) of the index written to storage."""
    data = index.to_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return default_storage.save(f"quality/dataset-{dataset_id}/{sha[:16]}.npz", ContentFile(data)), sha


def extractor_store(*, dataset_id: int, path: Path) -> tuple[str, str]:
    """(stored name, SHA-256) of the ONNX extractor in `path`, written to storage."""
    sha = sha256_file(path)
    with path.open("rb") as fh:
        return default_storage.save(f"quality/dataset-{dataset_id}/{sha[:16]}.onnx", fh), sha


def vectors_load(*, name: str, sha256: str) -> VectorIndex:
    """The stored index, from this host's copy (fetched and verified on first use)."""
    if not name:
        raise VectorsUnavailable("This analysis stored no vectors.")
    return _loaded_index(name, sha256)


def extractor_get(*, name: str, sha256: str) -> Extract:
    """The stored extractor, from this host's copy (fetched and verified on first use)."""
    if not name:
        raise VectorsUnavailable(
            "This analysis cannot search by an uploaded image (its backbone would not convert to ONNX, "
            "or it predates this search): analyse again, or search from an image of the dataset."
        )
    return _loaded_extractor(name, sha256)


@functools.lru_cache(maxsize=4)  # one per dataset analysed lately: a query then costs a search, not a read
def _loaded_index(name: str, sha256: str) -> VectorIndex:
    return VectorIndex.from_bytes(_local_copy(name, sha256, ".npz").read_bytes())


@functools.lru_cache(maxsize=2)  # a backbone's session holds its weights: a few MB to tens of MB each
def _loaded_extractor(name: str, sha256: str) -> Extract:
    return extractor_load(_local_copy(name, sha256, ".onnx"))


def _local_copy(name: str, sha256: str, suffix: str) -> Path:
    local = Path(settings.MODEL_CACHE_DIR) / "vectors" / f"{sha256}{suffix}"
    if not local.exists():
        try:
            copy_from_storage(name, local)
        except OSError as exc:
            raise VectorsUnavailable("The analysis's stored files are missing: analyse the dataset again.") from exc
        if sha256_file(local) != sha256:
            local.unlink(missing_ok=True)
            raise VectorsUnavailable(
                "The analysis's stored files are damaged (checksum mismatch): analyse the dataset again."
            )
        cache_trim([local.parent], settings.MODEL_CACHE_MAX_MB * 2**20, keep=[local])
    cache_touch(local)
    return local
