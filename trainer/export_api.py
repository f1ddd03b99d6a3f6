"""Model exports in the API (admins): /api/v1/models/{id}/exports/ lists and asks
for them, /api/v1/models/{id}/exports/{format}/download/ downloads one. A mixin of
trainer.api.ModelVersionViewSet, whose permissions and get_object() it uses."""

from collections.abc import Callable

from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from trainer.export_views import export_file_response
from trainer.exports import FORMAT_PATTERN, ExportRefused, model_export_request
from trainer.models import ExportFormat, ExportStatus, ModelExport, ModelVersion
from trainer.selectors import model_export_list, model_export_ready


class ModelExportSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ModelExport
        fields = ["format", "status", "file_size", "sha256", "error", "created_at", "finished_at", "download_url"]
        read_only_fields = fields

    def get_download_url(self, export: ModelExport) -> str | None:
        """Absolute URL of the file once the export succeeded, else null."""
        if export.status != ExportStatus.SUCCEEDED:
            return None
        path = reverse("model-export-download", args=[export.model_version_id, export.format])
        return self.context["request"].build_absolute_uri(path)


class ModelExportRequestSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=ExportFormat.choices)


# No docstring: drf-spectacular would describe every endpoint of the viewset with it.
class ModelExportActions:
    get_object: Callable[[], ModelVersion]  # only declared: the viewset's own method must stay in charge

    @extend_schema(methods=["GET"], request=None, responses={200: ModelExportSerializer(many=True)})
    @extend_schema(
        methods=["POST"],
        request=ModelExportRequestSerializer,
        responses={202: ModelExportSerializer, 400: OpenApiResponse(description="Unknown format.")},
        description="Ask for an export: a worker converts it (`.keras` is ready at once); poll the list for it.",
    )
    # One row per format at most: no pages, no filters (the viewset's are for versions).
    @action(
        detail=True,
        methods=["get", "post"],
        url_path="exports",
        url_name="exports",
        pagination_class=None,
        filter_backends=[],
    )
    def exports(self, request: Request, pk: str | None = None) -> Response:
        """This version's exports: format, status, size, SHA-256 and download URL."""
        version = self.get_object()
        if request.method == "GET":
            exports = model_export_list(user=request.user, version=version)
            return Response(ModelExportSerializer(exports, many=True, context={"request": request}).data)
        incoming = ModelExportRequestSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            export = model_export_request(version=version, format=incoming.validated_data["format"])
        except ExportRefused as exc:
            return Response({"detail": str(exc)}, status.HTTP_400_BAD_REQUEST)
        return Response(ModelExportSerializer(export, context={"request": request}).data, status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[OpenApiParameter("export_format", str, OpenApiParameter.PATH, enum=ExportFormat.values)],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            404: OpenApiResponse(description="No such version, or its export in this format is not ready."),
        },
    )
    @action(
        detail=True,
        methods=["get"],
        # Not `format`: DRF reads a URL argument of that name as the response format suffix.
        url_path=rf"exports/(?P<export_format>{FORMAT_PATTERN})/download",
        url_name="export-download",
    )
    def export_download(self, request: Request, pk: str | None = None, export_format: str = "") -> HttpResponseBase:
        """The export's file, as an attachment named `model-v{id}.{ext}`."""
        export = model_export_ready(user=request.user, version=self.get_object(), format=export_format)
        return export_file_response(export)
