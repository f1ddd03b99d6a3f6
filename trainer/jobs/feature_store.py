"""Frozen-backbone features shared through media storage. Computing them is the slow part
of a transfer-learning job (every image through the backbone), and they depend only on
the snapshot's images, the backbone file and the size: a worker that computed them stores
its cache folder as one tar, `features/<snapshot>/<folder>.<sha256>.tar`, and a worker on
another host without a local copy fetches it (its SHA-256 checked) instead of computing
them again, a sweep's trials on every host included. A stored cache is kept while a job
on its snapshot exists (verify_storage lists the others as orphans)."""

import logging
from collections.abc import Iterator
from pathlib import Path

from django.core.files.storage import default_storage

from classifier_site.storage_audit import Reference
from trainer.jobs.stored_folders import folder_fetch, folder_store

logger = logging.getLogger(__name__)

PREFIX = "features"


def features_fetch(folder: Path, snapshot_hash: str) -> bool:
    """Fill `folder` with the features a worker stored; False when none are stored or usable."""
    for name, sha in _stored(folder.name, snapshot_hash):
        try:
            folder_fetch(name, sha, folder)
            return True
        except Exception as exc:  # gone, damaged, storage out of reach (S3 raises its own): computed here
            logger.warning("stored features %s unusable: %s", name, exc)
    return False


def features_store(folder: Path, snapshot_hash: str) -> None:
    """Store the folder for other hosts, replacing what was stored for it before (fewer views)."""
    try:
        before = _stored(folder.name, snapshot_hash)
        name, _ = folder_store(folder, lambda sha: f"{_prefix(snapshot_hash)}/{folder.name}.{sha}.tar")
        for old, _sha in before:
            if old != name:
                default_storage.delete(old)
    except Exception:  # storage out of reach: the job goes on; other hosts compute their own
        logger.warning("features %s not stored", folder.name, exc_info=True)


def stored_feature_references(snapshot_hashes: set[str]) -> Iterator[Reference]:
    """The stored feature caches of these snapshots, with their SHA-256, for verify_storage."""
    keys = {_prefix(h).rsplit("/", 1)[1] for h in snapshot_hashes}
    try:
        folders = default_storage.listdir(PREFIX)[0]
    except FileNotFoundError:
        return
    for key in folders:
        if key in keys:
            for name in default_storage.listdir(f"{PREFIX}/{key}")[1]:
                yield Reference(f"{PREFIX}/{key}/{name}", f"features of snapshot {key[:12]}", _sha(name))


def _prefix(snapshot_hash: str) -> str:
    return f"{PREFIX}/{snapshot_hash[:32]}"


def _stored(folder_name: str, snapshot_hash: str) -> list[tuple[str, str]]:
    """(stored name, SHA-256) of each tar stored for this folder."""
    prefix = _prefix(snapshot_hash)
    try:
        names = default_storage.listdir(prefix)[1]
    except FileNotFoundError:
        return []
    except Exception as exc:
        logger.warning("stored features not listed: %s", exc)
        return []
    return [(f"{prefix}/{n}", _sha(n)) for n in names if n.startswith(f"{folder_name}.") and n.endswith(".tar")]


def _sha(name: str) -> str:
    return name.removesuffix(".tar").rsplit(".", 1)[-1]
