"""Download responses of datasets, shared by their pages and their API."""

from django.http import FileResponse, Http404

from datasets.exports import export_file_name, export_file_open
from datasets.models import DatasetExport


def dataset_export_response(export: DatasetExport) -> FileResponse:
    """The export's zip as an attachment named after the dataset (flowers-3-export.zip)."""
    try:
        stored = export_file_open(export)
    except OSError:
        raise Http404("The export's file is missing from storage; export the dataset again.") from None
    response = FileResponse(stored, as_attachment=True, filename=export_file_name(export.dataset))
    response["Cache-Control"] = "private, no-cache"
    return response
