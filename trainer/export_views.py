"""Model export pages (admins): the export table of a model version, asking for a
format, and downloads. Conversions run on a worker; these views only read and queue."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from trainer.exports import ExportRefused, export_file_name, model_export_request
from trainer.models import ModelExport
from trainer.selectors import model_export_ready, model_export_table, model_version_get


@staff_member_required
@require_http_methods(["GET", "POST"])
def exports_view(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the export table (an htmx partial). POST `format`: ask for that export."""
    version = model_version_get(user=request.user, pk=pk)
    error = ""
    if request.method == "POST":
        try:
            model_export_request(version=version, format=request.POST.get("format", ""))
        except ExportRefused as exc:
            error = str(exc)
        if not request.headers.get("HX-Request"):  # a plain form: back to the model page
            if error:
                messages.error(request, error)
            return redirect(reverse("models:detail", args=[pk]) + "#exports")
    context = {"version": version, "exports": model_export_table(user=request.user, version=version), "error": error}
    return render(request, "trainer/_model_exports.html", context, status=400 if error else 200)


@staff_member_required
def export_download_view(request: HttpRequest, pk: int, export_format: str) -> FileResponse:
    version = model_version_get(user=request.user, pk=pk)
    return export_file_response(model_export_ready(user=request.user, version=version, format=export_format))


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
