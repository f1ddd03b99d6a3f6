"""Writes to datasets: creating them, importing images, managing classes.

An import is all or nothing: its rows are written in one transaction and the
files it stored are deleted again if anything fails, so a failed import can
simply be retried.
"""

import hashlib
import io
import logging
import shutil
import tempfile
import time
import uuid
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from celery import Task
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone
from django.utils.text import get_valid_filename
from PIL import Image as PILImage

from classifier_site.errors import Conflict, Refused
from classifier_site.runs import Lifecycle, RunStatus, describe_error
from datasets.archives import ArchiveRefused, Entry, Limits, encode_png, open_source
from datasets.imaging import DecodedImage, ImageRejected, decode_image
from datasets.models import Dataset, DatasetImport, Image, Label, Split

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 128
_BATCH = 500


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
            "per_class": dict(sorted(self.per_class.items())),
            "skipped": [{"file": name, "reason": reason} for name, reason in self.skipped],
        }


# --- datasets and classes -----------------------------------------------------------------


def dataset_create(
    *, name: str, description: str = "", user: User | None = None, val_fraction: float = 0.1,
    test_fraction: float = 0.1, split_seed: int = 0,
) -> Dataset:  # fmt: skip
    """A new, empty dataset; its split fractions apply to the images added from now on."""
    name = name.strip()
    if not name:
        raise Refused("A dataset needs a name.")
    for what, value in (("validation", val_fraction), ("test", test_fraction)):
        if not 0 <= value <= 0.5:
            raise Refused(f"The {what} fraction must be between 0 and 0.5.")
    if Dataset.objects.filter(name=name).exists():
        raise Conflict(f"A dataset named {name!r} already exists.")
    return Dataset.objects.create(
        name=name, description=description, created_by=user, val_fraction=val_fraction,
        test_fraction=test_fraction, split_seed=split_seed,
    )  # fmt: skip


def clean_label_name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name) > 200:
        raise Refused("A class name must be 1 to 200 characters.")
    return name


def label_create(*, dataset: Dataset, name: str) -> Label:
    """A new class of `dataset`; a name it has already is a conflict."""
    name = clean_label_name(name)
    if Label.objects.filter(dataset=dataset, name=name).exists():
        raise Conflict(f"The class {name!r} already exists in {dataset.name}.")
    return Label.objects.create(dataset=dataset, name=name)


def label_get_or_create(*, dataset: Dataset, name: str) -> Label:
    label, _ = Label.objects.get_or_create(dataset=dataset, name=clean_label_name(name))
    return label


def image_queue_for_review(*, image: Image) -> Image:
    """Put `image` in its dataset's labelling queue (the workbench's review queue)."""
    return image_review_set(image=image, needs_review=True)


def image_review_set(*, image: Image, needs_review: bool) -> Image:
    Image.objects.filter(pk=image.pk).update(needs_review=needs_review)
    image.needs_review = needs_review
    return image


# --- writing images -------------------------------------------------------------------------


class _ImageWriter:
    """Adds images to one dataset inside one import, remembering what to undo."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.report = ImportReport()
        self.known = set(Image.objects.filter(dataset=dataset).values_list("sha256", flat=True))
        self.existing: Counter[tuple[int | None, str]] = Counter(
            {(row["label_id"], row["split"]): row["n"] for row in
             Image.objects.filter(dataset=dataset).values("label_id", "split").annotate(n=Count("id"))}
        )  # fmt: skip
        self.labels: dict[str, Label] = {}
        self.batch: list[tuple[Any, ...]] = []  # rows for _INSERT_COLUMNS
        self.new: dict[int | None, list[tuple[str, str | None]]] = defaultdict(list)  # (sha, predefined split)
        self.created_at = connection.ops.adapt_datetimefield_value(timezone.now())
        self.written: set[str] = set()

    def add_all(self, entries: Iterator[Entry], progress: Callable[[int], None] | None) -> None:
        """Decode, hash and store in threads (Pillow, hashlib and file I/O release the GIL);
        keep every database write in this thread."""
        count = 0
        with ThreadPoolExecutor(max_workers=settings.IMPORT_THREADS) as pool:
            for chunk in _chunks(entries, 64 * settings.IMPORT_THREADS):
                for prepared in pool.map(self._prepare, chunk):
                    self._record(prepared)
                count += len(chunk)
                if progress:
                    progress(count)

    def _prepare(self, entry: Entry) -> "_Prepared":
        """Everything about one entry that needs no database; runs in a worker thread."""
        if entry.pixels is None and (entry.skip or entry.data is None):
            return _Prepared(entry, reason=entry.skip or "empty entry")
        try:
            label = clean_label_name(entry.label) if entry.label else None
            decoded = self._decode(entry)
        except (ImageRejected, ValueError) as exc:
            return _Prepared(entry, reason=str(exc))
        assert entry.data is not None
        sha = hashlib.sha256(entry.data).hexdigest()
        if sha in self.known:
            return _Prepared(entry, sha=sha, label=label)
        name = _store(f"datasets/{self.dataset.pk}/{sha[:2]}/{sha}.{decoded.extension}", entry.data)
        thumb = name if max(decoded.width, decoded.height) <= THUMBNAIL_SIZE else self._thumbnail(decoded, sha)
        size = (decoded.width, decoded.height)
        return _Prepared(entry, sha=sha, label=label, file=name, thumbnail=thumb, size=size)

    @staticmethod
    def _decode(entry: Entry) -> DecodedImage:
        if entry.pixels is None:
            return decode_image(entry.data or b"", max_pixels=settings.MAX_IMAGE_PIXELS)
        # Pixels a reader decoded itself (CIFAR batches): encode once, nothing to re-check.
        height, width = entry.pixels.shape[:2]
        image = PILImage.fromarray(entry.pixels)
        entry.data, entry.pixels = encode_png(entry.pixels), None
        return DecodedImage(image=image, format="PNG", width=width, height=height)

    def _record(self, prepared: "_Prepared") -> None:
        entry = prepared.entry
        self.written.update(n for n in (prepared.file, prepared.thumbnail) if n)
        if prepared.reason:
            self.report.skipped.append((entry.name, prepared.reason))
            return
        if prepared.sha in self.known:  # already in the dataset, or twice in this upload
            self.report.duplicates += 1
            return
        self.known.add(prepared.sha)
        label = self._label(prepared.label) if prepared.label else None
        self.batch.append((
            self.dataset.pk, prepared.file, prepared.thumbnail, entry.name[-300:], prepared.sha,
            prepared.size[0], prepared.size[1], label.pk if label else None, Split.TRAIN.value, self.created_at,
        ))  # fmt: skip
        self.new[label.pk if label else None].append((prepared.sha, entry.split))
        self.report.imported += 1
        self.report.per_class[label.name if label else "(unlabelled)"] += 1
        if len(self.batch) >= _BATCH:
            self.flush()

    def _thumbnail(self, decoded: DecodedImage, sha: str) -> str:
        small = decoded.image.copy()
        small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=85)
        return _store(f"thumbnails/{self.dataset.pk}/{sha[:2]}/{sha}.jpg", buffer.getvalue())

    def _label(self, name: str) -> Label:
        if name not in self.labels:
            self.labels[name] = label_get_or_create(dataset=self.dataset, name=name)
        return self.labels[name]

    def flush(self) -> None:
        # One prepared INSERT for the batch: the ORM's per-row work was a third of
        # an import's time, and every row here is built by this class.
        if self.batch:
            with connection.cursor() as cursor:
                cursor.executemany(_INSERT_SQL, self.batch)
        self.batch = []

    def finish(self) -> None:
        self.flush()
        images = Image.objects.filter(dataset=self.dataset)
        for label_id, items in self.new.items():
            for split, shas in _assign_splits(self.dataset, items, self.existing, label_id).items():
                for start in range(0, len(shas), 5000):
                    images.filter(sha256__in=shas[start : start + 5000]).update(split=split)

    def undo_files(self) -> None:
        for name in self.written:
            default_storage.delete(name)


_INSERT_COLUMNS = ["dataset_id", "file", "thumbnail", "original_name", "sha256", "width", "height", "label_id",
                   "split", "created_at"]  # fmt: skip
_INSERT_SQL = "INSERT INTO {} ({}) VALUES ({})".format(
    connection.ops.quote_name(Image._meta.db_table),
    ", ".join(connection.ops.quote_name(c) for c in _INSERT_COLUMNS),
    ", ".join(["%s"] * len(_INSERT_COLUMNS)),
)


@dataclass
class _Prepared:
    entry: Entry
    reason: str | None = None  # why it is skipped
    sha: str = ""
    label: str | None = None
    file: str = ""  # names stored for it, so that a failed import can remove them
    thumbnail: str = ""
    size: tuple[int, int] = (0, 0)


def _store(name: str, data: bytes) -> str:
    # Names are content hashes and storage overwrites: a file left by an interrupted
    # import is rewritten with the same bytes, never duplicated under another name.
    return default_storage.save(name, ContentFile(data))


def _chunks(entries: Iterator[Entry], size: int) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _assign_splits(
    dataset: Dataset,
    items: list[tuple[str, str | None]],
    existing: Counter[tuple[int | None, str]],
    label_id: int | None,
) -> dict[str, list[str]]:
    """Stratified, seeded val/test assignment (by SHA-256) of one class's new images;
    existing images never move.

    Predefined `val` and `test` are kept; predefined `train` may become `val` (never `test`);
    the rest are drawn by a seeded hash so that each class ends up with its fractions.
    """
    total = len(items) + sum(n for (lid, _), n in existing.items() if lid == label_id)
    have = {s: existing[(label_id, s)] + sum(1 for _, p in items if p == s) for s in (Split.VALIDATION, Split.TEST)}
    key = lambda item: hashlib.sha256(f"{dataset.split_seed}:{item[0]}".encode()).digest()  # noqa: E731
    free = sorted((i for i in items if i[1] is None), key=key)
    test_need = max(0, round(total * dataset.test_fraction) - have[Split.TEST])
    test, free = free[:test_need], free[test_need:]
    pool = sorted(free + [i for i in items if i[1] == Split.TRAIN], key=key)
    val = pool[: max(0, round(total * dataset.val_fraction) - have[Split.VALIDATION])]
    return {
        Split.TEST: [i[0] for i in test] + [i[0] for i in items if i[1] == Split.TEST],
        Split.VALIDATION: [i[0] for i in val] + [i[0] for i in items if i[1] == Split.VALIDATION],
    }


def images_add(*, dataset: Dataset, items: Iterable[tuple[str, bytes, str | None]]) -> ImportReport:
    """Add (file name, bytes, class name or None) items, all or nothing."""
    entries = (Entry(name, data=data, label=label) for name, data, label in items)
    return _write(dataset, entries, progress=None)


def _write(dataset: Dataset, entries: Iterator[Entry], progress: Callable[[int], None] | None) -> ImportReport:
    writer = _ImageWriter(dataset)
    try:
        with transaction.atomic():
            writer.add_all(entries, progress)
            writer.finish()
    except Exception:
        writer.undo_files()
        raise
    return writer.report


# --- imports ------------------------------------------------------------------------------------


def import_create(
    *, dataset: Dataset, upload: File, user: User | None = None, label: str = "", enqueue: bool = True
) -> DatasetImport:
    """Keep the uploaded archive and queue its import on the `default` queue."""
    original = PurePosixPath(upload.name or "upload").name
    if label:
        label = clean_label_name(label)
    name = default_storage.save(f"imports/{uuid.uuid4().hex}/{get_valid_filename(original) or 'upload'}", upload)
    record = DatasetImport.objects.create(
        dataset=dataset, source=name, original_name=original[-300:], label=label, created_by=user
    )
    if enqueue:
        RUNS.publish_on_commit(record.pk)
    return record


def import_create_from_files(
    *, dataset: Dataset, files: list[File], user: User | None = None, label: str = "", enqueue: bool = True
) -> DatasetImport:
    """Loose files become one import: they are packed into a zip as they arrive."""
    with tempfile.TemporaryFile() as packed:
        with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_STORED) as archive:
            for number, upload in enumerate(files):
                base = get_valid_filename(PurePosixPath(upload.name or "").name) or "image"
                with archive.open(f"{number:05d}-{base}", "w") as member:
                    shutil.copyfileobj(upload, member)
        packed.seek(0)
        upload = File(packed, name=f"{len(files)} files.zip")
        return import_create(dataset=dataset, upload=upload, user=user, label=label, enqueue=enqueue)


def import_run(*, import_id: int, limits: Limits | None = None) -> DatasetImport:
    """Claim a queued import and run it to its end (the Celery task calls this)."""
    claimed = RUNS.claim(import_id)
    record = DatasetImport.objects.select_related("dataset").get(pk=import_id)
    if not claimed:
        logger.info("import %s is %s; nothing to do", import_id, record.status)
        return record
    return _execute(record, lambda: _local_copy(record.source.name or ""), limits or Limits())


def import_local_file(
    *, dataset: Dataset, path: Path, user: User | None = None, label: str = "", limits: Limits | None = None
) -> DatasetImport:
    """Import a file on this machine now, in this process (the `import_dataset` command)."""
    record = DatasetImport.objects.create(
        dataset=dataset, original_name=path.name[-300:], label=clean_label_name(label) if label else "",
        created_by=user, status=RunStatus.RUNNING, started_at=timezone.now(),
    )  # fmt: skip
    return _execute(record, lambda: nullcontext(path), limits or Limits())


def _execute(
    record: DatasetImport, open_path: Callable[[], AbstractContextManager[Path]], limits: Limits
) -> DatasetImport:
    try:
        with open_path() as path:
            report = import_path(record=record, path=path, limits=limits)
    except ArchiveRefused as exc:
        RUNS.finish(record.pk, RunStatus.FAILED, error=str(exc))
    except FileNotFoundError:
        RUNS.finish(record.pk, RunStatus.FAILED, error="The uploaded file is missing; upload it again.")
    except Exception as exc:
        logger.exception("import %s failed", record.pk)
        RUNS.finish(record.pk, RunStatus.FAILED, error=f"Unexpected error: {describe_error(exc)}")
    else:
        RUNS.finish(record.pk, RunStatus.SUCCEEDED, report=report.as_dict(), processed=report.imported)
        if record.source:  # imported: the rows and files are the data now
            default_storage.delete(record.source.name or "")
            DatasetImport.objects.filter(pk=record.pk).update(source="")
    record.refresh_from_db()
    return record


STALE_AFTER = timedelta(minutes=2)


def import_is_stale(record: DatasetImport) -> bool:
    """Running, but its worker has shown no progress for a while: it died."""
    if record.status != RunStatus.RUNNING or cache.get(import_progress_key(record.pk)) is not None:
        return False
    return record.started_at is None or record.started_at < timezone.now() - STALE_AFTER


def import_retry(*, record: DatasetImport) -> DatasetImport:
    """Queue a failed import again, or one whose worker died. The rows of a failed or
    interrupted attempt were never committed, and its files are rewritten with the same
    names, so a retry leaves nothing twice."""
    if record.status == RunStatus.SUCCEEDED:
        raise Conflict("This import succeeded; upload the file again to import it again.")
    if record.status == RunStatus.QUEUED or (record.status == RunStatus.RUNNING and not import_is_stale(record)):
        raise Conflict("This import is still queued or running.")
    if not record.source:
        raise Refused("The uploaded file is no longer kept; upload it again.")
    RUNS.requeue(record.pk, status=record.status, error="", started_at=None)
    record.refresh_from_db()
    return record


def import_path(*, record: DatasetImport, path: Path, limits: Limits) -> ImportReport:
    """Import a local archive file into the record's dataset, reporting progress."""
    source = open_source(path, limits=limits, label=record.label or None)
    DatasetImport.objects.filter(pk=record.pk).update(format=source.format, total=source.total)
    return _write(record.dataset, source.entries, progress=_progress_writer(record.pk))


def _progress_writer(import_id: int) -> Callable[[int], None]:
    # The import's rows are invisible until it commits, so live progress goes to the cache.
    last = 0.0

    def write(count: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.5:
            # Expires soon after the last write: its absence marks a dead worker.
            cache.set(import_progress_key(import_id), count, timeout=int(STALE_AFTER.total_seconds()))
            last = now

    return write


def import_progress_key(import_id: int) -> str:
    return f"dataset-import-progress:{import_id}"


def _forget_progress(import_id: int, status: str, fields: dict[str, object]) -> None:
    cache.delete(import_progress_key(import_id))


def _task() -> Task:
    from datasets.tasks import run_import

    return run_import


RUNS = Lifecycle(DatasetImport, _task, on_finish=_forget_progress)


@contextmanager
def _local_copy(name: str) -> Iterator[Path]:
    """A local path for a stored file: the file itself on disk, else a temporary copy."""
    try:
        local: Path | None = Path(default_storage.path(name))
    except NotImplementedError:  # remote storage (S3)
        local = None
    if local is not None:
        yield local
        return
    with tempfile.NamedTemporaryFile(suffix=PurePosixPath(name).suffix) as copy:
        with default_storage.open(name) as stored:
            shutil.copyfileobj(stored, copy)
        copy.flush()
        yield Path(copy.name)


# --- classes and images ----------------------------------------------------------------------


def label_rename(*, label: Label, name: str) -> Label:
    name = clean_label_name(name)
    if Label.objects.filter(dataset=label.dataset_id, name=name).exclude(pk=label.pk).exists():
        raise Conflict(f"The class {name!r} already exists: merge into it instead.")
    label.name = name
    label.save(update_fields=["name"])
    return label


def images_delete(*, dataset: Dataset, ids: Iterable[int]) -> int:
    """Delete images of `dataset` (ids of others are ignored) and, once committed, their files."""
    images = Image.objects.filter(dataset=dataset, pk__in=list(ids))
    names = [n for pair in images.values_list("file", "thumbnail") for n in pair if n]
    with transaction.atomic():
        count, _ = images.delete()
        transaction.on_commit(lambda: _delete_files(set(names)))
    return count


def _delete_files(names: Iterable[str]) -> None:
    for name in names:
        default_storage.delete(name)
