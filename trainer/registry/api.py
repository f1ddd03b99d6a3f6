"""The model registry in the API (admins): /api/v1/models/ with promote, rollback and
threshold (each within the version's dataset), the site's default dataset for
predictions naming none (/api/v1/models/default/), and each version's exports (ask
for a format, follow it, download it)."""

from collections.abc import Callable

from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from classifier_site.errors import Refused
from classifier_site.runs import RunStatus
from datasets.selectors import dataset_find
from trainer.models import ExportFormat, ModelExport, ModelVersion
from trainer.registry.exports import FORMAT_PATTERN, model_export_request
from trainer.registry.responses import export_file_response
from trainer.registry.selectors import (
    model_export_list,
    model_export_ready,
    model_version_list,
    model_version_serving,
    serving_default_choice,
)
from trainer.registry.services import (
    model_version_promote,
    model_version_rollback,
    model_version_set_threshold,
    serving_default_set,
)


class ModelExportSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ModelExport
        fields = ["format", "status", "file_size", "sha256", "error", "created_at", "finished_at", "download_url"]
        read_only_fields = fields

    def get_download_url(self, export: ModelExport) -> str | None:
        """Absolute URL of the file once the export succeeded, else null."""
        if export.status != RunStatus.SUCCEEDED:
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
        export = model_export_request(version=version, format=incoming.validated_data["format"])
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


class ModelVersionSerializer(serializers.ModelSerializer):
    macro_f1 = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "job", "dataset", "arch", "image_size", "classes", "metrics", "macro_f1", "sha256",
                  "file_size", "snapshot_hash", "rejection_threshold", "is_promoted", "promoted_at",
                  "created_at"]  # fmt: skip
        read_only_fields = fields


class PromoteSerializer(serializers.Serializer):
    force = serializers.BooleanField(default=False, help_text="Promote even if the macro-F1 gate refuses.")


class ThresholdSerializer(serializers.Serializer):
    rejection_threshold = serializers.FloatField(
        min_value=0.0, max_value=1.0, help_text='Top probability below which predictions answer "unknown"; 0: never.'
    )


class ServingDefaultSerializer(serializers.Serializer):
    dataset = serializers.CharField(
        allow_null=True, help_text="A dataset's id or name; null: the most recently promoted version answers."
    )


class ServingDefaultStateSerializer(serializers.Serializer):
    chosen = serializers.IntegerField(allow_null=True, help_text="The dataset admins chose, if any.")
    dataset = serializers.IntegerField(allow_null=True, help_text="The dataset that answers now.")
    model_version = serializers.IntegerField(allow_null=True, help_text="Its live version.")


class ModelVersionViewSet(ModelExportActions, viewsets.ReadOnlyModelViewSet):
    serializer_class = ModelVersionSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["dataset", "is_promoted"]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return model_version_list(user=self.request.user)

    @extend_schema(request=PromoteSerializer, responses={200: ModelVersionSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        incoming = PromoteSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        version = model_version_promote(
            version=self.get_object(), user=request.user, force=incoming.validated_data["force"]
        )
        return Response(self.get_serializer(version).data)

    @extend_schema(request=None, responses={200: ModelVersionSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Serve again the version that served before this one was promoted."""
        version = model_version_rollback(version=self.get_object(), user=request.user)
        return Response(self.get_serializer(version).data)

    @extend_schema(
        methods=["GET"], request=None, responses={200: ServingDefaultStateSerializer},
        summary="Which dataset answers predictions that name none",
    )  # fmt: skip
    @extend_schema(
        methods=["PUT"], request=ServingDefaultSerializer, responses={200: ServingDefaultStateSerializer, 400: None},
        summary="Choose the dataset that answers predictions that name none",
    )  # fmt: skip
    @action(detail=False, methods=["get", "put"], url_path="default", pagination_class=None, filter_backends=[])
    def serving_default(self, request: Request) -> Response:
        if request.method == "PUT":
            incoming = ServingDefaultSerializer(data=request.data)
            incoming.is_valid(raise_exception=True)
            name = incoming.validated_data["dataset"]
            dataset = None if name in (None, "") else dataset_find(str(name))
            if name not in (None, "") and dataset is None:
                raise Refused(f"No dataset {name!r}.")
            serving_default_set(dataset=dataset, user=request.user)
        serving = model_version_serving()
        return Response({
            "chosen": serving_default_choice(),
            "dataset": serving.dataset_id if serving else None,
            "model_version": serving.pk if serving else None,
        })  # fmt: skip

    @extend_schema(request=ThresholdSerializer, responses={200: ModelVersionSerializer})
    @action(detail=True, methods=["post"])
    def threshold(self, request: Request, pk: str | None = None) -> Response:
        incoming = ThresholdSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        version = model_version_set_threshold(
            version=self.get_object(), threshold=incoming.validated_data["rejection_threshold"]
        )
        return Response(self.get_serializer(version).data)
