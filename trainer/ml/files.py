"""File helpers shared by training and serving (no TensorFlow import here)."""

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    """The file's hash in any hashlib algorithm (Keras publishes md5 for some weights), read in 1 MB chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path | str) -> None:
    """Flush a file, or a folder (which makes a rename in it durable), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
