"""Writes to datasets: creating them, importing images, managing classes.

An import is all or nothing, without holding SQLite's one write lock for its length:
its rows are committed in small batches to a staging table (`StagedImage`), each batch
before its files are written, and copied into `Image` in one short transaction at the
end. If it fails, its staged rows and the files nothing else uses are removed (by the
import itself, or by `imports_reap` when its worker died), so it can simply be retried.
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
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from celery import Task
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from django.utils.text import get_valid_filename
from PIL import Image as PILImage

from classifier_site.errors import Conflict, Refused
from classifier_site.runs import Lifecycle, RunStatus, describe_error
from datasets.archives import ArchiveRefused, Entry, Limits, encode_png, open_source
from datasets.imaging import DecodedImage, ImageRejected, decode_image
from datasets.models import Dataset, DatasetImport, Image, Label, Split, StagedImage

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 128


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


class ImportReaped(Exception):
    """The reaper took this attempt back (its worker looked dead): it stops and leaves the row be."""


class _ImageWriter:
    """Adds images to one dataset: stages rows (for an import, a committed batch at a time),
    writes files once their rows are staged, and publishes all of them in `finish`."""

    def __init__(self, dataset: Dataset, run: DatasetImport | None = None) -> None:
        self.dataset = dataset
        self.run = run
        self.attempt = run.attempts if run is not None else 0
        self.report = ImportReport()
        self.known = set(Image.objects.filter(dataset=dataset).values_list("sha256", flat=True))
        # Keyed by class name, not id: an import makes its classes only as it commits.
        self.existing: Counter[tuple[str | None, str]] = Counter(
            {(row["label__name"], row["split"]): row["n"] for row in
             Image.objects.filter(dataset=dataset).values("label__name", "split").annotate(n=Count("id"))}
        )  # fmt: skip
        self.batch: list[tuple[Any, ...]] = []  # rows for _STAGE_COLUMNS
        self.new: dict[str | None, list[tuple[str, str | None]]] = defaultdict(list)  # (sha, predefined split)
        self.created_at = connection.ops.adapt_datetimefield_value(timezone.now())
        self.written: set[str] = set()

    def add_all(self, entries: Iterator[Entry], progress: Callable[[int], None] | None) -> None:
        """Decode, hash and store in threads (Pillow, hashlib and file I/O release the GIL);
        keep every database write in this thread."""
        count = 0
        with ThreadPoolExecutor(max_workers=settings.IMPORT_THREADS) as pool:
            for chunk in _chunks(entries, 64 * settings.IMPORT_THREADS, settings.IMPORT_BATCH_BYTES):
                count += len(chunk)
                self._add_chunk(pool, chunk, count)
                chunk.clear()  # the next batch's bytes replace these rather than join them
                if progress:
                    progress(count)

    def _add_chunk(self, pool: ThreadPoolExecutor, chunk: list[Entry], count: int) -> None:
        # A method of its own so that no local name keeps the chunk's bytes alive after it.
        files = [file for prepared in pool.map(self._prepare, chunk) for file in self._record(prepared)]
        # Committed before a file is written: a killed import's staged rows name every file it wrote.
        self.flush(processed=count)
        self.written.update(name for name, _ in files)
        for _ in pool.map(lambda file: _store(*file), files):  # iterated, so that a failure raises here
            pass

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
        name = f"datasets/{self.dataset.pk}/{sha[:2]}/{sha}.{decoded.extension}"
        size = (decoded.width, decoded.height)
        if max(size) <= THUMBNAIL_SIZE:  # its own thumbnail
            return _Prepared(entry, sha=sha, label=label, file=name, thumbnail=name, size=size)
        thumb, small = f"thumbnails/{self.dataset.pk}/{sha[:2]}/{sha}.jpg", _jpeg(decoded)
        return _Prepared(entry, sha=sha, label=label, file=name, thumbnail=thumb, thumbnail_data=small, size=size)

    @staticmethod
    def _decode(entry: Entry) -> DecodedImage:
        if entry.pixels is None:
            return decode_image(entry.data or b"", max_pixels=settings.MAX_IMAGE_PIXELS)
        # Pixels a reader decoded itself (CIFAR batches): encode once, nothing to re-check.
        height, width = entry.pixels.shape[:2]
        image = PILImage.fromarray(entry.pixels)
        entry.data, entry.pixels = encode_png(entry.pixels), None
        return DecodedImage(image=image, format="PNG", width=width, height=height)

    def _record(self, prepared: "_Prepared") -> list[tuple[str, bytes]]:
        """Stage one prepared entry; the (name, bytes) files it needs written."""
        entry = prepared.entry
        if prepared.reason:
            self.report.skipped.append((entry.name, prepared.reason))
            return []
        if prepared.sha in self.known:  # already in the dataset, or twice in this upload
            self.report.duplicates += 1
            return []
        self.known.add(prepared.sha)
        self.batch.append((
            self.run.pk if self.run else None, self.attempt, self.dataset.pk, prepared.file, prepared.thumbnail,
            entry.name[-300:], prepared.sha, prepared.size[0], prepared.size[1], prepared.label or "",
            Split.TRAIN.value, self.created_at,
        ))  # fmt: skip
        self.new[prepared.label].append((prepared.sha, entry.split))
        self.report.imported += 1
        self.report.per_class[prepared.label or "(unlabelled)"] += 1
        assert entry.data is not None
        files = [(prepared.file, entry.data)]
        return files + ([(prepared.thumbnail, prepared.thumbnail_data)] if prepared.thumbnail_data else [])

    def flush(self, processed: int | None = None) -> None:
        """Stage the batch in one short transaction, with the import's heartbeat."""
        rows, self.batch = self.batch, []
        with transaction.atomic():
            if self.run is not None and not _beat(self.run, processed or 0):
                raise ImportReaped(f"import {self.run.pk} attempt {self.attempt} was reaped")
            if rows:
                _lock_dataset(self.dataset.pk)  # see _remove_unreferenced
                with connection.cursor() as cursor:
                    # One prepared INSERT: the ORM's per-row work was a third of an import's time.
                    cursor.executemany(_STAGE_SQL, rows)

    def staged(self) -> QuerySet[StagedImage]:
        if self.run is None:  # images_add: rows no other transaction sees
            return StagedImage.objects.filter(run__isnull=True, dataset=self.dataset)
        return StagedImage.objects.filter(run=self.run, attempt=self.attempt)

    def finish(self) -> None:
        """Publish the staged rows: splits, classes, then `Image` rows (in the caller's transaction)."""
        # An upload that names validation images (a val/ folder, val rows in its manifest) chose its
        # splits itself, so its train images stay train: what a dataset export re-imports as it was.
        train_is_final = any(split == Split.VALIDATION for items in self.new.values() for _, split in items)
        for name, items in self.new.items():
            for split, shas in _assign_splits(self.dataset, items, self.existing, name, train_is_final).items():
                for start in range(0, len(shas), 5000):
                    self.staged().filter(sha256__in=shas[start : start + 5000]).update(split=split)
            if name:
                label_get_or_create(dataset=self.dataset, name=name)
        run = (self.run.pk, self.attempt) if self.run else None
        with connection.cursor() as cursor:
            cursor.execute(*_publish_sql(self.dataset.pk, run))
        self.staged().delete()

    def discard(self) -> None:
        """After a failure: drop this attempt's staged rows and the files nothing else uses."""
        if self.run is not None:
            self.staged().delete()
        run = (self.run.pk, self.attempt) if self.run else None
        _remove_unreferenced(self.written, dataset_id=self.dataset.pk, run=run)


def _jpeg(decoded: DecodedImage) -> bytes:
    small = decoded.image.copy()
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


_STAGE_COLUMNS = ["run_id", "attempt", "dataset_id", "file", "thumbnail", "original_name", "sha256", "width",
                  "height", "label_name", "split", "created_at"]  # fmt: skip
_COPIED = ["dataset_id", "file", "thumbnail", "original_name", "sha256", "width", "height", "split", "created_at"]
_q = connection.ops.quote_name
_STAGE_SQL = "INSERT INTO {} ({}) VALUES ({})".format(
    _q(StagedImage._meta.db_table), ", ".join(_q(c) for c in _STAGE_COLUMNS), ", ".join(["%s"] * len(_STAGE_COLUMNS))
)
# One statement moves a whole import into `Image`, finding each class by name (made just before).
_PUBLISH_SQL = (
    f"INSERT INTO {_q(Image._meta.db_table)} ({', '.join(_q(c) for c in [*_COPIED, 'label_id'])}) "
    f"SELECT {', '.join('s.' + _q(c) for c in _COPIED)}, l.{_q('id')} FROM {_q(StagedImage._meta.db_table)} s "
    f"LEFT JOIN {_q(Label._meta.db_table)} l ON l.{_q('dataset_id')} = s.{_q('dataset_id')} "
    f"AND l.{_q('name')} = s.{_q('label_name')} WHERE s.{_q('dataset_id')} = %s AND {{run}} ORDER BY s.{_q('id')}"
)


def _publish_sql(dataset_id: int, run: tuple[int, int] | None) -> tuple[str, list[int]]:
    if run is None:
        return _PUBLISH_SQL.format(run=f"s.{_q('run_id')} IS NULL"), [dataset_id]
    return _PUBLISH_SQL.format(run=f"s.{_q('run_id')} = %s AND s.{_q('attempt')} = %s"), [dataset_id, *run]


def _beat(run: DatasetImport, processed: int) -> bool:
    """Stamp the import's heartbeat; False when it is no longer this attempt's to run."""
    mine = DatasetImport.objects.filter(pk=run.pk, status=RunStatus.RUNNING, attempts=run.attempts)
    return bool(mine.update(heartbeat_at=timezone.now(), processed=processed))


def _lock_dataset(dataset_id: int) -> None:
    # On PostgreSQL, the dataset's row lock orders a batch being staged against the reaper
    # checking the same file names; on SQLite the one write lock does (no FOR UPDATE there).
    list(Dataset.objects.select_for_update().filter(pk=dataset_id).values_list("pk", flat=True))


def _remove_unreferenced(names: Iterable[str], *, dataset_id: int, run: tuple[int, int] | None) -> int:
    """Delete the stored files of `names` that no image row (of any dataset) and no staged
    row of another import or a later attempt names; returns how many there were.

    Files are named by content, so another import may be writing the same name right now:
    it commits its staged row before writing, under the dataset's lock, which each batch
    here takes before checking, so a file is either seen as used or written again after."""
    removed, ordered = 0, sorted(set(names))
    for start in range(0, len(ordered), 100):  # short transactions: deleting takes a while on S3
        batch = ordered[start : start + 100]
        with transaction.atomic():
            _lock_dataset(dataset_id)
            for name in sorted(set(batch) - _referenced(batch, run)):
                if default_storage.exists(name):
                    default_storage.delete(name)
                    removed += 1
                removed += _remove_partials(name)
    return removed


def _remove_partials(name: str) -> int:
    """A write killed half-way leaves `<name>.<pid>-<thread>.partial` on local storage
    (classifier_site.storage); remote storage writes whole objects or nothing."""
    try:
        path = Path(default_storage.path(name))
    except NotImplementedError:
        return 0
    leftovers = list(path.parent.glob(f"{path.name}.*.partial")) if path.parent.is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)


def _referenced(names: list[str], run: tuple[int, int] | None) -> set[str]:
    staged = StagedImage.objects.all()
    if run is not None:  # the attempt being discarded and the earlier ones do not count
        staged = staged.exclude(run_id=run[0], attempt__lte=run[1])
    used: set[str] = set()
    for rows in (Image.objects.all(), staged):
        used.update(rows.filter(file__in=names).values_list("file", flat=True))
        used.update(rows.filter(thumbnail__in=names).values_list("thumbnail", flat=True))
    return used


@dataclass
class _Prepared:
    entry: Entry
    reason: str | None = None  # why it is skipped
    sha: str = ""
    label: str | None = None
    file: str = ""  # names to store it under, staged before they are written
    thumbnail: str = ""
    thumbnail_data: bytes | None = None  # None: the image is its own thumbnail
    size: tuple[int, int] = (0, 0)


def _store(name: str, data: bytes) -> str:
    # Names are content hashes and storage overwrites: a file left by an interrupted
    # import is rewritten with the same bytes, never duplicated under another name.
    return default_storage.save(name, ContentFile(data))


def _chunks(entries: Iterator[Entry], size: int, max_bytes: int) -> Iterator[list[Entry]]:
    """Batches of at most `size` entries holding at most `max_bytes` of undecoded data
    (or one entry, if it alone is more): what an import holds is bounded by settings."""
    chunk: list[Entry] = []
    held = 0
    for entry in entries:
        entry_bytes = _held_bytes(entry)
        if chunk and held + entry_bytes > max_bytes:
            yield chunk
            chunk, held = [], 0
        chunk.append(entry)
        held += entry_bytes
        if len(chunk) == size:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _held_bytes(entry: Entry) -> int:
    return len(entry.data) if entry.data is not None else entry.pixels.nbytes if entry.pixels is not None else 0


def _assign_splits(
    dataset: Dataset,
    items: list[tuple[str, str | None]],
    existing: Counter[tuple[str | None, str]],
    label: str | None,
    train_is_final: bool = False,
) -> dict[str, list[str]]:
    """Stratified, seeded val/test assignment (by SHA-256) of one class's new images;
    existing images never move.

    Predefined `val` and `test` are kept; predefined `train` may become `val` (never `test`)
    unless `train_is_final`; the rest are drawn by a seeded hash so that each class ends up
    with its fractions.
    """
    total = len(items) + sum(n for (name, _), n in existing.items() if name == label)
    have = {s: existing[(label, s)] + sum(1 for _, p in items if p == s) for s in (Split.VALIDATION, Split.TEST)}
    key = lambda item: hashlib.sha256(f"{dataset.split_seed}:{item[0]}".encode()).digest()  # noqa: E731
    free = sorted((i for i in items if i[1] is None), key=key)
    test_need = max(0, round(total * dataset.test_fraction) - have[Split.TEST])
    test, free = free[:test_need], free[test_need:]
    movable = [] if train_is_final else [i for i in items if i[1] == Split.TRAIN]
    pool = sorted(free + movable, key=key)
    val = pool[: max(0, round(total * dataset.val_fraction) - have[Split.VALIDATION])]
    return {
        Split.TEST: [i[0] for i in test] + [i[0] for i in items if i[1] == Split.TEST],
        Split.VALIDATION: [i[0] for i in val] + [i[0] for i in items if i[1] == Split.VALIDATION],
    }


def images_add(*, dataset: Dataset, items: Iterable[tuple[str, bytes, str | None]]) -> ImportReport:
    """Add (file name, bytes, class name or None) items, all or nothing."""
    entries = (Entry(name, data=data, label=label) for name, data, label in items)
    return _write(dataset, entries, progress=None)


def image_add_or_get(*, dataset: Dataset, filename: str, data: bytes) -> tuple[Image, bool]:
    """The dataset's image with these bytes, added unlabelled when it has none: (image,
    whether it was added). ValueError, saying why, when the file was refused."""
    sha = hashlib.sha256(data).hexdigest()
    if (existing := Image.objects.filter(dataset=dataset, sha256=sha).first()) is not None:
        return existing, False
    report = images_add(dataset=dataset, items=[(filename, data, None)])
    if (added := Image.objects.filter(dataset=dataset, sha256=sha).first()) is None:
        reasons = "; ".join(reason for _, reason in report.skipped) or "skipped"
        raise ValueError(f"{filename} was not added: {reasons}")
    return added, True


def _write(
    dataset: Dataset, entries: Iterator[Entry], progress: Callable[[int], None] | None,
    run: DatasetImport | None = None,
) -> ImportReport:  # fmt: skip
    """Add `entries` all or nothing. For an import (`run`) batches commit as they go and
    the images appear, with the run marked succeeded, in one short transaction at the end;
    a few images added by hand (`images_add`) take one transaction as they always did."""
    writer = _ImageWriter(dataset, run)
    try:
        with transaction.atomic() if run is None else nullcontext():
            writer.add_all(entries, progress)
            with transaction.atomic():  # the only write that lasts longer than a batch
                writer.finish()
                if run is not None:
                    _succeed(run, writer.report)
    except Exception:
        writer.discard()
        raise
    return writer.report


def _succeed(run: DatasetImport, report: ImportReport) -> None:
    fields = {"report": report.as_dict(), "processed": report.imported}
    if not RUNS.finish(run.pk, RunStatus.SUCCEEDED, only=_this_attempt(run), **fields):
        raise ImportReaped(f"import {run.pk} attempt {run.attempts} was reaped")


def _this_attempt(run: DatasetImport) -> QuerySet[DatasetImport]:
    # A worker that lost its run to the reaper must not end the retry now running it.
    return DatasetImport.objects.filter(pk=run.pk, attempts=run.attempts)


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


def import_limits() -> Limits:
    """The archive limits the settings give (IMPORT_MAX_IMAGE_BYTES, IMPORT_MAX_EXPANDED_BYTES)."""
    return Limits(max_entry_bytes=settings.IMPORT_MAX_IMAGE_BYTES, max_total_bytes=settings.IMPORT_MAX_EXPANDED_BYTES)


def import_run(*, import_id: int, limits: Limits | None = None) -> DatasetImport:
    """Claim a queued import and run it to its end (the Celery task calls this)."""
    claimed = RUNS.claim(import_id)
    record = DatasetImport.objects.select_related("dataset").get(pk=import_id)
    if not claimed:
        logger.info("import %s is %s; nothing to do", import_id, record.status)
        return record
    return _execute(record, lambda: _local_copy(record.source.name or ""), limits or import_limits())


def import_local_file(
    *, dataset: Dataset, path: Path, user: User | None = None, label: str = "", limits: Limits | None = None
) -> DatasetImport:
    """Import a file on this machine now, in this process (the `import_dataset` command)."""
    record = DatasetImport.objects.create(
        dataset=dataset, original_name=path.name[-300:], label=clean_label_name(label) if label else "",
        created_by=user, status=RunStatus.RUNNING, started_at=timezone.now(), attempts=1,
    )  # fmt: skip
    return _execute(record, lambda: nullcontext(path), limits or import_limits())


def _execute(
    record: DatasetImport, open_path: Callable[[], AbstractContextManager[Path]], limits: Limits
) -> DatasetImport:
    mine = _this_attempt(record)
    try:
        with open_path() as path:
            import_path(record=record, path=path, limits=limits)
    except ImportReaped:
        logger.warning("import %s attempt %s was taken back by the reaper; stopping", record.pk, record.attempts)
    except ArchiveRefused as exc:
        RUNS.finish(record.pk, RunStatus.FAILED, only=mine, error=str(exc))
    except FileNotFoundError:
        RUNS.finish(record.pk, RunStatus.FAILED, only=mine, error="The uploaded file is missing; upload it again.")
    except Exception as exc:
        logger.exception("import %s failed", record.pk)
        RUNS.finish(record.pk, RunStatus.FAILED, only=mine, error=f"Unexpected error: {describe_error(exc)}")
    else:
        if record.source:  # imported: the rows and files are the data now
            default_storage.delete(record.source.name or "")
            DatasetImport.objects.filter(pk=record.pk).update(source="")
    record.refresh_from_db()
    return record


def import_stale_after() -> timedelta:
    return timedelta(seconds=settings.IMPORT_STALE_SECONDS)


def import_is_stale(record: DatasetImport) -> bool:
    """Running, but its worker has committed nothing for IMPORT_STALE_SECONDS: it died."""
    last = record.heartbeat_at or record.started_at
    return record.status == RunStatus.RUNNING and (last is None or last < timezone.now() - import_stale_after())


def import_retry(*, record: DatasetImport) -> DatasetImport:
    """Queue a failed import again, or one whose worker died. The rows of a failed or
    interrupted attempt were only staged (the retry drops them), and its files are
    rewritten with the same names, so a retry leaves nothing twice."""
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
    """Import a local archive file into the record's dataset, reporting progress; the
    record is marked succeeded in the transaction that makes its images visible."""
    source = open_source(path, limits=limits, label=record.label or None)
    DatasetImport.objects.filter(pk=record.pk).update(format=source.format, total=source.total)
    _attempts_discard(record.dataset_id, record.pk, up_to=record.attempts - 1)  # a dead one nobody reaped
    return _write(record.dataset, source.entries, progress=_progress_writer(record.pk), run=record)


def _progress_writer(import_id: int) -> Callable[[int], None]:
    # Between batches (which stamp `processed` on the row), live progress goes to the cache.
    last = 0.0

    def write(count: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.5:
            # Expires soon after the last write: its absence marks a dead worker.
            cache.set(import_progress_key(import_id), count, timeout=settings.IMPORT_STALE_SECONDS)
            last = now

    return write


def import_progress_key(import_id: int) -> str:
    return f"dataset-import-progress:{import_id}"


def _forget_progress(import_id: int, status: str, fields: dict[str, object]) -> None:
    cache.delete(import_progress_key(import_id))


def _task() -> Task:
    from datasets.tasks import run_import

    return run_import


RUNS = Lifecycle(DatasetImport, _task, claim_fields=lambda: {"attempts": F("attempts") + 1}, on_finish=_forget_progress)


# --- the reaper's part ---------------------------------------------------------------------------


@dataclass
class ImportsReaped:
    requeued: list[int]
    failed: list[int]
    files_removed: int = 0  # files of dead attempts that no image used


def imports_reap(*, now: datetime | None = None) -> ImportsReaped:
    """Re-queue the running imports whose worker died (no batch committed for
    IMPORT_STALE_SECONDS) up to IMPORT_MAX_ATTEMPTS attempts, then fail them saying why;
    either way first remove the dead attempt's staged rows and the files no image uses.
    `manage.py reaper` runs it with the training reaper."""
    before = (now or timezone.now()) - import_stale_after()
    reaped = ImportsReaped([], [])
    silent = Q(heartbeat_at__lt=before) | Q(heartbeat_at__isnull=True, started_at__lt=before)
    dead = DatasetImport.objects.filter(silent, status=RunStatus.RUNNING)
    for record in dead.only("pk", "dataset_id", "attempts", "heartbeat_at", "started_at", "source"):
        # Compare-and-set on what was read: a worker that just stamped, or another reaper, wins.
        still_dead = _this_attempt(record).filter(silent, status=RunStatus.RUNNING)
        retry = bool(record.source) and record.attempts < settings.IMPORT_MAX_ATTEMPTS
        if retry and still_dead.update(status=RunStatus.QUEUED, started_at=None, heartbeat_at=None, error=""):
            reaped.requeued.append(record.pk)
        elif not retry and RUNS.finish(record.pk, RunStatus.FAILED, only=still_dead, error=_death(record)):
            reaped.failed.append(record.pk)
        else:
            continue
        cache.delete(import_progress_key(record.pk))
        reaped.files_removed += _attempts_discard(record.dataset_id, record.pk, up_to=record.attempts)
        if retry:
            RUNS.publish(record.pk)  # after the clean-up; a broker that is down fails it, saying so
    return reaped


def _death(record: DatasetImport) -> str:
    last = record.heartbeat_at or record.started_at
    since = f"no progress since {last:%Y-%m-%d %H:%M:%S} UTC" if last else "no progress"
    if not record.source:
        return f"The import stopped ({since}): its process died. Nothing was imported; run it again."
    return (
        f"The worker stopped during attempt {record.attempts} of {settings.IMPORT_MAX_ATTEMPTS} ({since}); "
        "not retrying. Nothing was imported; retry it once the cause is fixed."
    )


def _attempts_discard(dataset_id: int, run_id: int, *, up_to: int) -> int:
    """Drop the staged rows of a run's attempts up to `up_to` and the files only they name."""
    staged = StagedImage.objects.filter(run_id=run_id, attempt__lte=up_to)
    names = {name for pair in staged.values_list("file", "thumbnail") for name in pair if name}
    removed = _remove_unreferenced(names, dataset_id=dataset_id, run=(run_id, up_to)) if names else 0
    staged.delete()
    return removed


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


def images_split_set(*, dataset: Dataset, ids: Iterable[int], split: str) -> int:
    """Move images of `dataset` (ids of others are ignored) into `split`; how many moved."""
    if split not in Split.values:
        raise Refused(f"Unknown split {split!r}: choose from {', '.join(Split.values)}.")
    return Image.objects.filter(dataset=dataset, pk__in=list(ids)).exclude(split=split).update(split=split)


def _delete_files(names: Iterable[str]) -> None:
    for name in names:
        default_storage.delete(name)
