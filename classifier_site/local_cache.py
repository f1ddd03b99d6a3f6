"""A host's local caches: decoded images and backbone features under TRAIN_WORK_DIR, model
files under MODEL_CACHE_DIR. Each entry is a copy of what storage holds or can be made
again from it, so a host may lose any of them at any time; each is verified before use
(model files by SHA-256, image and feature folders by their key and `complete` marker).

Each cache has a budget in bytes. Using an entry stamps its modification time; past the
budget, the least recently used entries go first. An entry used in the last GRACE_SECONDS
stays even past the budget: another process on the host may be reading it."""

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

GRACE_SECONDS = 600.0
LEFTOVER_SECONDS = 3600.0  # a half-written entry this old was left by a killed process


def cache_touch(entry: Path) -> None:
    """Mark `entry` (a file or a folder) as just used."""
    with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: nothing to mark
        os.utime(entry)


def cache_trim(folders: Iterable[Path], budget_bytes: int, keep: Iterable[Path] = ()) -> list[Path]:
    """Evict the least recently used entries of `folders` until they fit `budget_bytes`;
    `keep` and entries in use (touched within GRACE_SECONDS) stay. Returns what went."""
    folders = list(folders)
    for folder in folders:
        _remove_leftovers(folder)
    entries = [entry for folder in folders for entry in _entries(folder)]
    sizes = {entry: _size(entry) for entry in entries}
    total, kept, recent = sum(sizes.values()), set(keep), time.time() - GRACE_SECONDS
    evicted: list[Path] = []
    for entry in sorted(entries, key=_mtime):
        if total <= budget_bytes:
            break
        if entry in kept or _mtime(entry) > recent:
            continue
        _remove(entry)
        total -= sizes[entry]
        evicted.append(entry)
    if evicted:
        logger.info("local cache: evicted %d entries, %d MB left", len(evicted), total // 2**20)
    return evicted


def _entries(folder: Path) -> list[Path]:
    # Names starting with "." or ending ".partial" are being written: never entries yet.
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(".partial")]


def _remove_leftovers(folder: Path) -> None:
    if folder.is_dir():
        old = time.time() - LEFTOVER_SECONDS
        for path in folder.iterdir():
            if (path.name.startswith(".") or path.name.endswith(".partial")) and _mtime(path) < old:
                _remove(path)


def _size(entry: Path) -> int:
    try:
        if entry.is_dir():
            return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        return entry.stat().st_size
    except FileNotFoundError:  # another process evicted it meanwhile
        return 0


def _mtime(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.name.startswith("."):
        # Renamed first, so no reader ever finds a half-deleted folder under the entry's name.
        doomed = entry.with_name(f".evicted-{entry.name}-{os.getpid()}")
        try:
            entry.rename(doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
    elif entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
