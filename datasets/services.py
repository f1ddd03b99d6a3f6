"""Writes to datasets: creating them, adding images, importing archives."""

import hashlib
import logging
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from datasets.imaging import ImageRejected, decode_image
from datasets.models import Dataset, Image, Label, Split

logger = logging.getLogger(__name__)

# Files that operating systems leave in archives; skipped without a word.
_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
MAX_ENTRY_BYTES = 64 * 1024 * 1024


class ImportFailed(Exception):
    """The whole import was refused; nothing was kept. The message is for people."""


@dataclass
class ImportReport:
    imported: int = 0
    duplicates: int = 0
    per_class: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)

    def as_dict(self) -> dict[str, object]:
        return {
            "imported": self.imported,
            "duplicates": self.duplicates,
            "per_class": dict(self.per_class),
            "skipped": [{"file": name, "reason": reason} for name, reason in self.skipped],
        }


def dataset_create(*, name: str, description: str = "", user: User | None = None) -> Dataset:
    name = name.strip()
    if not name:
        raise ValueError("A dataset needs a name.")
    return Dataset.objects.create(name=name, description=description, created_by=user)


def label_get_or_create(*, dataset: Dataset, name: str) -> Label:
    name = " ".join(name.split())
    if not name or len(name) > 200:
        raise ValueError("A class name must be 1 to 200 characters.")
    label, _ = Label.objects.get_or_create(dataset=dataset, name=name)
    return label


def split_for(sha256: str) -> str:
    """A stable 80/10/10 split from the content hash: re-imports never move an image."""
    bucket = int(sha256[:8], 16) % 100
    if bucket < 80:
        return Split.TRAIN
    return Split.VALIDATION if bucket < 90 else Split.TEST


class _ImageWriter:
    """Adds images to one dataset inside one import, remembering what to undo."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.report = ImportReport()
        self.known = set(Image.objects.filter(dataset=dataset).values_list("sha256", flat=True))
        self.labels: dict[str, Label] = {}
        self.pending: list[Image] = []
        self.written: list[str] = []

    def add(self, data: bytes, *, original_name: str, label_name: str | None) -> None:
        try:
            decoded = decode_image(data, max_pixels=settings.MAX_IMAGE_PIXELS)
        except ImageRejected as exc:
            self.report.skipped.append((original_name, str(exc)))
            return
        sha = hashlib.sha256(data).hexdigest()
        if sha in self.known:
            self.report.duplicates += 1
            return
        self.known.add(sha)
        name = f"datasets/{self.dataset.pk}/{sha[:2]}/{sha}.{decoded.extension}"
        if not default_storage.exists(name):
            name = default_storage.save(name, ContentFile(data))
            self.written.append(name)
        label = self._label(label_name) if label_name else None
        self.pending.append(
            Image(
                dataset=self.dataset,
                file=name,
                original_name=original_name[-300:],
                sha256=sha,
                width=decoded.width,
                height=decoded.height,
                label=label,
                split=split_for(sha),
            )
        )
        self.report.imported += 1
        self.report.per_class[label_name or "(unlabelled)"] += 1

    def _label(self, name: str) -> Label:
        if name not in self.labels:
            self.labels[name] = label_get_or_create(dataset=self.dataset, name=name)
        return self.labels[name]

    def save(self) -> None:
        Image.objects.bulk_create(self.pending, batch_size=1000)

    def undo_files(self) -> None:
        for name in self.written:
            default_storage.delete(name)


def images_add(*, dataset: Dataset, items: list[tuple[str, bytes, str | None]]) -> ImportReport:
    """Add (file name, bytes, class name or None) items, all or nothing."""
    writer = _ImageWriter(dataset)
    try:
        with transaction.atomic():
            for original_name, data, label_name in items:
                writer.add(data, original_name=original_name, label_name=label_name)
            writer.save()
    except Exception:
        writer.undo_files()
        raise
    return writer.report


def dataset_import_zip(*, dataset: Dataset, source: str | Path | IO[bytes]) -> ImportReport:
    """Import a zip of class folders (`cat/x.jpg`), all or nothing."""
    if not zipfile.is_zipfile(source):
        raise ImportFailed("not a zip archive")
    writer = _ImageWriter(dataset)
    try:
        with zipfile.ZipFile(source) as archive, transaction.atomic():
            for info in archive.infolist():
                _import_entry(archive, info, writer)
            writer.save()
    except zipfile.BadZipFile as exc:
        writer.undo_files()
        raise ImportFailed(f"damaged zip archive: {exc}") from exc
    except Exception:
        writer.undo_files()
        raise
    logger.info("imported %s images into %s", writer.report.imported, dataset)
    return writer.report


def _import_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _ImageWriter) -> None:
    if info.is_dir():
        return
    path = PurePosixPath(info.filename)
    if path.parts[0] == "__MACOSX" or path.name in _IGNORED_NAMES or path.name.startswith("._"):
        return
    reason = _entry_problem(info)
    if reason:
        writer.report.skipped.append((info.filename, reason))
        return
    try:
        data = _read_limited(archive, info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        writer.report.skipped.append((info.filename, f"damaged archive entry ({exc})"))
        return
    if data is None:
        writer.report.skipped.append((info.filename, f"larger than {MAX_ENTRY_BYTES:,} bytes uncompressed"))
        return
    writer.add(data, original_name=info.filename, label_name=path.parts[-2])


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    parts = PurePosixPath(name).parts
    if "\\" in name or "\x00" in name or name.startswith("/") or ".." in parts:
        return "path escapes archive"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        return "symbolic link"
    if len(parts) != 2:
        return "not inside a class folder (expected class/image)"
    return None


def _read_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | None:
    # Count what is really decompressed: header sizes can lie.
    with archive.open(info) as stream:
        data = stream.read(MAX_ENTRY_BYTES + 1)
    return None if len(data) > MAX_ENTRY_BYTES else data
