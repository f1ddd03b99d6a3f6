"""Writes of dataset exports: a dataset as a zip the importer takes back as it was.

The zip is laid out the way the importer reads archives (datasets.archives):

    manifest.csv            filename,label,split,sha256: one row per image, the truth on import
    train/cat/<sha256>.png  the stored file byte for byte, so its SHA-256 is the row's
    val/<sha256>.jpg        an unlabelled image: directly in its split folder, which the importer
                            reads as "no class" (an `unlabelled/` folder would come back as a class)
    label_history.json      every label change (datasets.models.LabelChange), oldest first,
                            images named by SHA-256 (ids mean nothing on another site)
    dataset.json            the dataset's name, split fractions and seed, and what the zip holds

Class folders are for people; the manifest names each image's class exactly, so a
class whose name cannot be a folder (`a/b`, `..`) still comes back under its name.

A worker on the `default` queue (or the `export_dataset` command, here) writes the zip
to a temporary file image by image, never holding it in memory, and stores it for
download; a dataset keeps only its latest successful export. Like every run, the row
is the truth: a worker claims it with a conditional UPDATE.
"""

import csv
import hashlib
import json
import logging
import re
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from celery import Task
from django.contrib.auth.models import User
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import slugify

from classifier_site.errors import Refused
from classifier_site.runs import ACTIVE, Lifecycle, RunStatus, describe_error
from datasets.models import EXPORT_STALE, Dataset, DatasetExport, Image, LabelChange

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["filename", "label", "split", "sha256"]  # the importer's `filename,label[,split]`, plus the hash
HISTORY = "label_history.json"
DESCRIPTION = "dataset.json"
FORMAT_VERSION = 1
CHUNK = 1 << 20
_PAGE = 1000
_PROGRESS_SECONDS = 1.0


class ExportRefused(Refused):
    """The dataset cannot be exported as it is; the message says why."""


def _task() -> Task:
    from datasets.tasks import export_dataset

    return export_dataset


RUNS = Lifecycle(DatasetExport, _task, heartbeat=True)


class _Lost(Exception):
    """The export is no longer this worker's: deleted, or failed as stale meanwhile."""


@dataclass(frozen=True)
class ExportedZip:
    path: Path
    size: int
    sha256: str
    report: dict[str, Any]


def export_file_name(dataset: Dataset) -> str:
    """What a download is called: `flowers-3-export.zip`."""
    return f"{slugify(dataset.name) or 'dataset'}-{dataset.pk}-export.zip"


# --- asking for one ------------------------------------------------------------------------


def dataset_export_request(*, dataset: Dataset, user: User | None = None, enqueue: bool = True) -> DatasetExport:
    """The dataset's export under way, or a new one queued for a worker on the `default`
    queue once the transaction commits. Asking twice while one runs gets that one."""
    RUNS.fail_stale(DatasetExport.objects.filter(dataset=dataset), after=EXPORT_STALE)
    export = DatasetExport.objects.filter(dataset=dataset, status__in=ACTIVE).first() or _create(dataset, user)
    if enqueue and export.status == RunStatus.QUEUED:
        RUNS.publish_on_commit(export.pk)  # its message may be lost; a duplicate claims nothing
    return export


def _create(dataset: Dataset, user: User | None) -> DatasetExport:
    try:
        with transaction.atomic():  # the partial unique index settles two requests racing each other
            return DatasetExport.objects.create(dataset=dataset, created_by=user)
    except IntegrityError:
        # The racing request's export (or, had it finished meanwhile, the fresh file it made).
        export = DatasetExport.objects.filter(dataset=dataset).first()
        if export is None:
            raise ExportRefused(f"The exports of {dataset.name} changed meanwhile; ask again.") from None
        return export


# --- making one (a worker) -------------------------------------------------------------------


def dataset_export_run(*, export_id: int) -> DatasetExport | None:
    """Write and store a queued export (the Celery task calls this). None when the row is
    gone (its dataset was deleted)."""
    if not RUNS.claim(export_id):
        logger.info("dataset export %s is not queued; nothing to do (duplicate delivery?)", export_id)
        return DatasetExport.objects.filter(pk=export_id).first()
    export = DatasetExport.objects.select_related("dataset").get(pk=export_id)
    try:
        name, written = _write_and_store(export)
    except _Lost:
        logger.warning("dataset export %s was deleted or failed meanwhile; stopped", export_id)
    except Exception as exc:
        logger.exception("dataset export %s failed", export_id)
        RUNS.finish(export_id, RunStatus.FAILED, error=describe_error(exc))
    else:
        _finish(export, name, written)
    return DatasetExport.objects.filter(pk=export_id).first()


def _write_and_store(export: DatasetExport) -> tuple[str, ExportedZip]:
    dataset = export.dataset
    with tempfile.TemporaryDirectory(prefix=f"dataset-export-{export.pk}-") as tmp:
        written = dataset_export_write(dataset=dataset, output=Path(tmp) / "export.zip", progress=_progress(export.pk))
        with written.path.open("rb") as fh:
            # Named by content: storage that replaces an existing name still holds the same bytes.
            name = default_storage.save(f"exports/dataset-{dataset.pk}/{written.sha256[:16]}.zip", File(fh))
    return name, written


def _finish(export: DatasetExport, name: str, written: ExportedZip) -> None:
    fields: dict[str, Any] = {"file": name, "sha256": written.sha256, "file_size": written.size, "error": ""}
    if not RUNS.finish(
        export.pk, RunStatus.SUCCEEDED, report=written.report, processed=written.report["images"], **fields
    ):
        default_storage.delete(name)  # failed as stale meanwhile: no row will ever name the file
        return
    _forget_older(export, keep=name)


def _forget_older(export: DatasetExport, *, keep: str) -> None:
    """A dataset keeps its latest export only: older ones are deleted, with their files."""
    older = DatasetExport.objects.filter(dataset_id=export.dataset_id, pk__lt=export.pk).exclude(status__in=ACTIVE)
    names = {n for n in older.values_list("file", flat=True) if n and n != keep}
    with transaction.atomic():
        older.delete()
        transaction.on_commit(lambda: _delete_files(names))


def _delete_files(names: set[str]) -> None:
    for name in names:
        default_storage.delete(name)


def _progress(export_id: int) -> Callable[[int, int], None]:
    """Writes the count to the row about once a second (its heartbeat too); raises _Lost
    when the row is no longer running."""
    last = 0.0

    def write(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done and done < total and now - last < _PROGRESS_SECONDS:
            return
        last = now
        if not RUNS.running(export_id).update(processed=done, total=total, heartbeat_at=timezone.now()):
            raise _Lost

    return write


# --- the zip -----------------------------------------------------------------------------------


def dataset_export_write(
    *, dataset: Dataset, output: Path, progress: Callable[[int, int], None] | None = None
) -> ExportedZip:
    """Write the dataset's zip to the local file `output`, here and now (a worker, the
    `export_dataset` command). A missing or damaged image file refuses the whole export:
    a zip that silently lacks images is not what was put in."""
    images = _images(dataset)
    total = images.count()
    with (
        zipfile.ZipFile(output, "w", allowZip64=True) as archive,
        tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as rows,
    ):
        report = _write_images(archive, images, total, csv.writer(rows), progress)
        rows.seek(0)
        _write_member(archive, MANIFEST, (line.encode() for line in rows))
        report["label_changes"] = _write_history(archive, dataset)
        _write_member(archive, DESCRIPTION, [json.dumps(_description(dataset, report), indent=2).encode()])
    return ExportedZip(path=output, size=output.stat().st_size, sha256=_sha256(output), report=report)


def _images(dataset: Dataset) -> QuerySet[Any, Any]:
    # Images added while the export runs wait for the next one: the total stays true.
    images = Image.objects.filter(dataset=dataset)
    last = images.order_by("pk").values_list("pk", flat=True).last() or 0
    return images.filter(pk__lte=last).values_list("pk", "file", "sha256", "split", "label__name", "created_at")


def _write_images(
    archive: zipfile.ZipFile,
    images: QuerySet[Any, Any],
    total: int,
    manifest: Any,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    manifest.writerow(MANIFEST_COLUMNS)
    folder, counts, problems = _Folders(), Counter[tuple[str, str]](), []
    if progress:
        progress(0, total)
    for done, (pk, name, sha, split, label, created) in enumerate(_in_pages(images), 1):
        member = f"{split}/{folder(label)}/{sha}" if label else f"{split}/{sha}"
        member += PurePosixPath(name).suffix.lower()
        if problem := _copy_image(archive, member, name, sha, created):
            problems.append(f"image {pk} ({name}): {problem}")
        manifest.writerow([member, label or "", split, sha])
        counts[(label or "", split)] += 1
        if progress:
            progress(done, total)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ExportRefused(f"{len(problems)} image files are missing or damaged ({shown}). Run verify_storage.")
    return _report(counts)


def _in_pages(rows: QuerySet[Any, Any]) -> Iterator[tuple[Any, ...]]:
    """Rows whose first value is the pk, a page at a time by pk: bounded memory, and no
    cursor held open across the progress writes."""
    after = 0
    while page := list(rows.filter(pk__gt=after).order_by("pk")[:_PAGE]):
        yield from page
        after = page[-1][0]


def _copy_image(archive: zipfile.ZipFile, member: str, name: str, sha: str, created: datetime) -> str | None:
    """Copy a stored image into the zip, hashing it on the way; why not, or None."""
    digest = hashlib.sha256()
    try:
        with default_storage.open(name, "rb") as src, archive.open(_info(member, created), "w") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
    except OSError:
        return "file missing"
    return None if digest.hexdigest() == sha else "file damaged (its SHA-256 differs from the stored one)"


def _info(member: str, when: datetime, compress: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    # Images are stored as they are (PNG and JPEG are compressed already); text is deflated.
    info = zipfile.ZipInfo(member, date_time=timezone.localtime(when).timetuple()[:6])
    info.compress_type = compress
    info.external_attr = 0o644 << 16  # a plain readable file once extracted
    return info


def _write_member(archive: zipfile.ZipFile, member: str, chunks: Any) -> None:
    with archive.open(_info(member, timezone.now(), zipfile.ZIP_DEFLATED), "w") as out:
        for chunk in chunks:
            out.write(chunk)


def _write_history(archive: zipfile.ZipFile, dataset: Dataset) -> int:
    """Every label change as one JSON array, written a page at a time."""
    changes = LabelChange.objects.filter(dataset=dataset).values_list(
        "pk", "image__sha256", "old_label", "new_label", "source", "user__username", "batch", "version", "undone",
        "created_at",
    )  # fmt: skip
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        yield b"["
        for row in _in_pages(changes):
            yield (b",\n" if count else b"\n") + json.dumps(_change(row)).encode()
            count += 1
        yield b"\n]\n"

    _write_member(archive, HISTORY, lines())
    return count


def _change(row: tuple[Any, ...]) -> dict[str, Any]:
    _, sha, old, new, source, user, batch, version, undone, created = row
    return {"image_sha256": sha, "old_label": old or None, "new_label": new or None, "source": source, "user": user,
            "batch": str(batch), "version": version, "undone": undone, "created_at": created.isoformat()}  # fmt: skip


def _report(counts: Counter[tuple[str, str]]) -> dict[str, Any]:
    classes: dict[str, dict[str, int]] = {}
    for (label, split), n in sorted(counts.items()):
        if label:
            classes.setdefault(label, {"train": 0, "val": 0, "test": 0})[split] = n
    unlabelled = sum(n for (label, _), n in counts.items() if not label)
    return {"images": sum(counts.values()), "unlabelled": unlabelled, "classes": classes}


def _description(dataset: Dataset, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": "classifier_site dataset export",
        "version": FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "dataset": {
            "name": dataset.name,
            "description": dataset.description,
            "val_fraction": dataset.val_fraction,
            "test_fraction": dataset.test_fraction,
            "split_seed": dataset.split_seed,
        },
        # Classes without images are listed here but cannot come back: an import creates the classes it sees.
        "all_classes": sorted(dataset.labels.values_list("name", flat=True)),
        "files": {"manifest": MANIFEST, "label_history": HISTORY},
        **report,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


class _Folders:
    """A folder name per class, safe in any archive reader and unique even where file
    systems ignore case (`Cat` and `cat` both exist: the second is `cat (2)`)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.used: set[str] = set()

    def __call__(self, label: str) -> str:
        if label not in self.names:
            base = _UNSAFE.sub("_", label)
            base = f"_{base}" if base in (".", "..") else base
            folder, n = base, 2
            while folder.casefold() in self.used:
                folder, n = f"{base} ({n})", n + 1
            self.used.add(folder.casefold())
            self.names[label] = folder
        return self.names[label]


def export_file_open(export: DatasetExport) -> IO[bytes]:
    """The stored zip of a finished export; OSError when storage lost it."""
    return default_storage.open(str(export.file.name), "rb")
