"""Download responses of the registry, shared by its pages and its API."""

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404

from trainer.models import ModelExport
from trainer.registry.exports import export_file_name


def export_file_response(export: ModelExport) -> FileResponse:
    """The export's file as an attachment named after the version (model-v12.onnx)."""
    try:
        stored = default_storage.open(str(export.file.name))
    except OSError:
        raise Http404("The export's file is missing from storage; ask for the export again.") from None
    name = export_file_name(export.model_version, export.format)
    response = FileResponse(stored, as_attachment=True, filename=name)
    response["Cache-Control"] = "private, no-cache"
    return response
