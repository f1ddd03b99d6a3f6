"""Writes to model exports: a model version converted for another runtime once, by
a worker, and kept for download. TensorFlow loads inside `model_export_run` and
`model_export_write` only (a worker, a management command), never in web processes.

Like training jobs, the database is the truth: a worker claims a queued export
with a conditional UPDATE, so a duplicate task delivery converts nothing twice.
"""

import logging
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from classifier_site.queueing import publish
from trainer.ml.files import sha256_file
from trainer.models import ExportFormat, ExportStatus, ModelExport, ModelVersion

logger = logging.getLogger(__name__)

# Download names end like this; a SavedModel is a folder, so it travels zipped.
SUFFIXES = {
    ExportFormat.KERAS: ".keras",
    ExportFormat.SAVEDMODEL: "-savedmodel.zip",
    ExportFormat.TFLITE: ".tflite",
    ExportFormat.ONNX: ".onnx",
}
# For URL patterns: exactly the formats, nothing else (grouped, so it stays whole beside other text).
FORMAT_PATTERN = f"(?:{'|'.join(ExportFormat.values)})"


class ExportRefused(Exception):
    """The export cannot be asked for; the message says why."""


@dataclass(frozen=True)
class ExportedFile:
    path: Path
    size: int
    sha256: str


def export_file_name(version: ModelVersion, fmt: str) -> str:
    """What a download is called: model-v12.onnx, model-v12-savedmodel.zip..."""
    return f"model-v{version.pk}{SUFFIXES[ExportFormat(fmt)]}"


def export_format(value: str) -> ExportFormat:
    try:
        return ExportFormat(value)
    except ValueError:
        raise ExportRefused(
            f"Unknown export format {value!r}; choose one of {', '.join(ExportFormat.values)}."
        ) from None


def model_export_request(*, version: ModelVersion, format: str) -> ModelExport:
    """The version's export in `format`, asked for once: a new or failed one is
    queued for a worker when the transaction commits; a `.keras` one is the
    version's own file, ready at once."""
    fmt = export_format(format)
    with transaction.atomic():
        export, created = ModelExport.objects.get_or_create(model_version=version, format=fmt)
        if fmt == ExportFormat.KERAS:
            _keras_ready(export, version)
        elif created or _requeue(export):
            transaction.on_commit(partial(_enqueue, export.pk))
    export.refresh_from_db()
    return export


def _keras_ready(export: ModelExport, version: ModelVersion) -> None:
    """No conversion: the export row points at the version's verified file."""
    ModelExport.objects.filter(pk=export.pk).exclude(status=ExportStatus.SUCCEEDED).update(
        status=ExportStatus.SUCCEEDED,
        file=str(version.file.name),
        sha256=version.sha256,
        file_size=version.file_size or _stored_size(str(version.file.name)),
        error="",
        finished_at=timezone.now(),
    )


def _stored_size(name: str) -> int:
    """Versions made before sizes were recorded: ask storage (0 when it cannot say)."""
    try:
        return default_storage.size(name)
    except OSError:
        return 0


def _requeue(export: ModelExport) -> bool:
    """A failed export is tried again, and so is one whose worker died; a queued one
    is sent again (its message may be lost, and a duplicate is harmless). Running or
    done: nothing to do."""
    if export.status == ExportStatus.QUEUED:
        return True
    retry = Q(status=ExportStatus.FAILED)
    if export.is_stale:  # its worker died mid-conversion
        retry |= Q(status=ExportStatus.RUNNING, started_at=export.started_at)
    return bool(
        ModelExport.objects.filter(retry, pk=export.pk).update(
            status=ExportStatus.QUEUED, error="", started_at=None, finished_at=None
        )
    )


def _enqueue(export_id: int) -> None:
    from trainer.tasks import export_model

    if error := publish(export_model, export_id):
        _finish(export_id, ExportStatus.FAILED, error=error)


def _claim(export_id: int) -> bool:
    """Conditional UPDATE: only one worker ever moves an export from queued to running."""
    queued = ModelExport.objects.filter(pk=export_id, status=ExportStatus.QUEUED)
    return bool(queued.update(status=ExportStatus.RUNNING, started_at=timezone.now()))


def _finish(export_id: int, status: ExportStatus, **fields: object) -> bool:
    exports = ModelExport.objects.filter(pk=export_id, status__in=[ExportStatus.QUEUED, ExportStatus.RUNNING])
    return bool(exports.update(status=status, finished_at=timezone.now(), **fields))


def model_export_run(*, export_id: int) -> ModelExport | None:
    """Convert and store a queued export (called by the Celery task in a worker).
    None when the row is gone (its version was deleted)."""
    if not _claim(export_id):
        logger.info("export %s is not queued; nothing to do (duplicate delivery?)", export_id)
        return ModelExport.objects.filter(pk=export_id).first()
    export = ModelExport.objects.select_related("model_version").get(pk=export_id)
    version_id = export.model_version_id
    try:
        name, written = _convert_and_store(export)
    except Exception as exc:
        logger.exception("export %s failed", export_id)
        _finish(export_id, ExportStatus.FAILED, error=_describe(exc))
    else:
        _finish(export_id, ExportStatus.SUCCEEDED, file=name, sha256=written.sha256, file_size=written.size, error="")
        logger.info("export %s (%s of version %s): %s bytes", export_id, export.format, version_id, written.size)
    export.refresh_from_db()
    return export


def _convert_and_store(export: ModelExport) -> tuple[str, ExportedFile]:
    version = export.model_version
    with tempfile.TemporaryDirectory(prefix=f"export-{export.pk}-") as tmp:
        written = model_export_write(version=version, format=export.format, output=Path(tmp) / "export")
        suffix = SUFFIXES[ExportFormat(export.format)]
        with written.path.open("rb") as fh:
            # Named by content: storage that replaces an existing name still holds the same bytes.
            name = default_storage.save(f"exports/version-{version.pk}/{written.sha256[:16]}{suffix}", File(fh))
    return name, written


def model_export_write(*, version: ModelVersion, format: str, output: Path) -> ExportedFile:
    """Write the version in `format` to the local file `output`, here and now
    (the `export_model` command; a worker). Loads TensorFlow."""
    from classification.predictor import local_model_file
    from trainer.ml.export import export_file

    fmt = export_format(format)
    export_file(local_model_file(version), fmt.value, output)
    return ExportedFile(path=output, size=output.stat().st_size, sha256=sha256_file(output))


def _describe(exc: Exception) -> str:
    from classification.predictor import NoModelAvailable
    from trainer.ml.export import ExportError

    if isinstance(exc, (NoModelAvailable, ExportError, ExportRefused)):
        return str(exc)  # already in words for the user
    return f"{type(exc).__name__}: {exc}"[:2000]
