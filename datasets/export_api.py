"""Dataset exports in the API (admins): /api/v1/datasets/{id}/export/ to ask for one and
follow it, /api/v1/datasets/{id}/export/download/ for the zip."""

from collections.abc import Callable

from django.http import Http404
from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from classifier_site.permissions import admin_user
from classifier_site.runs import RunStatus
from datasets.exports import dataset_export_request
from datasets.models import Dataset, DatasetExport
from datasets.responses import dataset_export_response
from datasets.selectors import dataset_export_ready, dataset_export_state


class DatasetExportSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = DatasetExport
        fields = ["id", "dataset", "status", "processed", "total", "file_size", "sha256", "report", "error",
                  "created_at", "started_at", "finished_at", "download_url"]  # fmt: skip
        read_only_fields = fields

    def get_download_url(self, export: DatasetExport) -> str | None:
        """Absolute URL of the zip once the export succeeded, else null."""
        if export.status != RunStatus.SUCCEEDED:
            return None
        path = reverse("dataset-export-download", args=[export.dataset_id])
        return self.context["request"].build_absolute_uri(path)


# No docstring: drf-spectacular would describe every endpoint of the viewset with it.
class DatasetExportActions:
    get_object: Callable[[], Dataset]  # only declared: the viewset's own method must stay in charge

    @extend_schema(
        methods=["GET"], request=None,
        responses={200: DatasetExportSerializer, 404: OpenApiResponse(description="Never exported.")},
        description="The dataset's latest export: status, progress, size, SHA-256 and download URL.",
    )  # fmt: skip
    @extend_schema(
        methods=["POST"], request=None, responses={202: DatasetExportSerializer},
        description="Ask for an export: a worker writes the zip (poll GET for it). While one is queued or "
        "running, that one is answered.",
    )  # fmt: skip
    @action(detail=True, methods=["get", "post"], url_path="export", url_name="export", filter_backends=[])
    def export(self, request: Request, pk: str | None = None) -> Response:
        dataset = self.get_object()
        if request.method == "POST":
            export = dataset_export_request(dataset=dataset, user=admin_user(request))  # type: ignore[arg-type]
            return Response(self._export_data(request, export), status.HTTP_202_ACCEPTED)
        latest = dataset_export_state(user=request.user, dataset=dataset).latest
        if latest is None:
            raise Http404(f"{dataset.name} was never exported: POST to ask for an export.")
        return Response(self._export_data(request, latest))

    @staticmethod
    def _export_data(request: Request, export: DatasetExport) -> dict[str, object]:
        return dict(DatasetExportSerializer(export, context={"request": request}).data)

    @extend_schema(
        request=None,
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            404: OpenApiResponse(description="No such dataset, or no finished export of it."),
        },
    )
    @action(detail=True, methods=["get"], url_path="export/download", url_name="export-download")
    def export_download(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """The latest finished export's zip, as an attachment named `{dataset}-{id}-export.zip`."""
        return dataset_export_response(dataset_export_ready(user=request.user, dataset=self.get_object()))
