"""Writes to model exports: a model version converted for another runtime once, by
a worker, and kept for download. TensorFlow loads inside `model_export_run` and
`model_export_write` only (a worker, a management command), never in web processes.

Like training jobs, the database is the truth: a worker claims a queued export
with a conditional UPDATE, so a duplicate task delivery converts nothing twice.
"""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from celery import Task
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from classifier_site.errors import Refused
from classifier_site.runs import Lifecycle, RunStatus, describe_error
from trainer.ml.files import sha256_file
from trainer.models import ExportFormat, ModelExport, ModelVersion
from trainer.registry.files import NoModelAvailable, local_model_file

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


class ExportRefused(Refused):
    """The export cannot be asked for; the message says why."""


def _task() -> Task:
    from trainer.tasks import export_model

    return export_model


RUNS = Lifecycle(ModelExport, _task)


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
            RUNS.publish_on_commit(export.pk)
    export.refresh_from_db()
    return export


def _keras_ready(export: ModelExport, version: ModelVersion) -> None:
    """No conversion: the export row points at the version's verified file."""
    ModelExport.objects.filter(pk=export.pk).exclude(status=RunStatus.SUCCEEDED).update(
        status=RunStatus.SUCCEEDED,
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
    if export.status == RunStatus.QUEUED:
        return True
    retry = Q(status=RunStatus.FAILED)
    if export.is_stale:  # its worker died mid-conversion
        retry |= Q(status=RunStatus.RUNNING, started_at=export.started_at)
    return bool(
        ModelExport.objects.filter(retry, pk=export.pk).update(
            status=RunStatus.QUEUED, error="", started_at=None, finished_at=None
        )
    )


def model_export_run(*, export_id: int) -> ModelExport | None:
    """Convert and store a queued export (called by the Celery task in a worker).
    None when the row is gone (its version was deleted)."""
    if not RUNS.claim(export_id):
        logger.info("export %s is not queued; nothing to do (duplicate delivery?)", export_id)
        return ModelExport.objects.filter(pk=export_id).first()
    export = ModelExport.objects.select_related("model_version").get(pk=export_id)
    version_id = export.model_version_id
    try:
        name, written = _convert_and_store(export)
    except Exception as exc:
        logger.exception("export %s failed", export_id)
        RUNS.finish(export_id, RunStatus.FAILED, error=_describe(exc))
    else:
        RUNS.finish(export_id, RunStatus.SUCCEEDED, file=name, sha256=written.sha256, file_size=written.size, error="")
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
    from trainer.ml.export import export_file

    fmt = export_format(format)
    export_file(local_model_file(version), fmt.value, output)
    return ExportedFile(path=output, size=output.stat().st_size, sha256=sha256_file(output))


def _describe(exc: Exception) -> str:
    from trainer.ml.export import ExportError

    return describe_error(exc, NoModelAvailable, ExportError)
