"""A worker's folder in media storage as one tar named by the caller, its SHA-256 checked on
the way back: how checkpoints and feature caches travel between hosts with no disk in
common (trainer.jobs.checkpoints, trainer.jobs.feature_store)."""

import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage

from trainer.ml.files import sha256_file


def folder_store(folder: Path, name_for: Callable[[str], str], skip: frozenset[str] = frozenset()) -> tuple[str, str]:
    """Store `folder`'s files (but `skip`) as one tar named `name_for(its SHA-256)`;
    returns the stored name and the SHA-256."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        packed = Path(tmp) / "folder.tar"
        with tarfile.open(packed, "w") as tar:  # weights and features do not compress: plain tar
            for path in sorted(folder.iterdir()):
                if path.name not in skip:
                    tar.add(path, arcname=path.name)
        sha = sha256_file(packed)
        with packed.open("rb") as fh:
            stored = default_storage.save(name_for(sha), File(fh))
    return stored, sha


def folder_fetch(name: str, sha: str, folder: Path) -> None:
    """Make `folder` the stored tar's content; raises when it is gone or its SHA-256 is not `sha`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        packed = Path(tmp) / "folder.tar"
        with default_storage.open(name) as src, packed.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        if sha256_file(packed) != sha:
            raise ValueError("its SHA-256 differs from the one recorded")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(packed) as tar:
            tar.extractall(unpacked, filter="data")  # no links out, no absolute paths
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(unpacked, folder)
