"""Jobs, model versions and evaluations API (admins): /api/v1/jobs/, /api/v1/models/, /api/v1/evaluations/."""

import django_filters
from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from classifier_site.permissions import admin_user
from datasets.models import Dataset
from trainer.export_api import ModelExportActions
from trainer.ml.config import ConfigError, TrainConfig, architectures
from trainer.models import Evaluation, ModelVersion, TrainingJob
from trainer.report_views import CHARTS, chart_response, predictions_csv_response
from trainer.selectors import evaluation_list, job_list, model_version_list
from trainer.services import (
    PromotionRefused,
    TrainingRefused,
    model_version_promote,
    model_version_rollback,
    model_version_set_threshold,
    training_job_cancel,
    training_job_repeat,
    training_job_start,
)


class TrainingJobSerializer(serializers.ModelSerializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    config = serializers.JSONField(
        required=False, help_text="Fields of TrainConfig; omitted ones take the chosen architecture's defaults."
    )
    model_version = serializers.PrimaryKeyRelatedField(read_only=True)
    eta_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = TrainingJob
        fields = [
            "id", "dataset", "config", "status", "progress", "epoch", "step", "steps", "images_per_second",
            "history", "error", "device", "host", "attempts", "events", "environment", "snapshot_hash",
            "recipe", "phase", "eta_seconds", "cancel_requested", "created_at", "started_at", "heartbeat_at",
            "finished_at", "model_version",
        ]  # fmt: skip
        read_only_fields = [f for f in fields if f not in ("dataset", "config")]

    def validate_config(self, value: object) -> TrainConfig:
        if not isinstance(value, dict):
            raise serializers.ValidationError("config must be an object")
        try:
            return TrainConfig.from_dict(value)
        except ConfigError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class TrainingJobFilter(django_filters.FilterSet):
    # A callable: backbone files installed after start-up are choices too.
    arch = extend_schema_field(OpenApiTypes.STR)(
        django_filters.ChoiceFilter(field_name="config__arch", choices=lambda: [(a, a) for a in architectures()])
    )

    class Meta:
        model = TrainingJob
        fields = ["dataset", "status", "arch"]


class TrainingJobViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = TrainingJobSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_class = TrainingJobFilter

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return job_list(user=self.request.user)

    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        incoming = self.get_serializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        config = incoming.validated_data.get("config") or TrainConfig.defaults()
        try:
            job = training_job_start(
                dataset=incoming.validated_data["dataset"], config=config, user=admin_user(request)
            )
        except TrainingRefused as exc:
            return Response({"detail": str(exc)}, status.HTTP_400_BAD_REQUEST)
        job.refresh_from_db()
        return Response(self.get_serializer(job).data, status.HTTP_201_CREATED)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = training_job_cancel(job=self.get_object())
        return Response(self.get_serializer(job).data)

    @extend_schema(request=None, responses={201: TrainingJobSerializer})
    @action(detail=True, methods=["post"])
    def repeat(self, request: Request, pk: str | None = None) -> Response:
        """Run again: a new job with this job's resolved config on the same snapshot."""
        job = training_job_repeat(job=self.get_object(), user=admin_user(request))
        job.refresh_from_db()
        return Response(self.get_serializer(job).data, status.HTTP_201_CREATED)


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
        try:
            version = model_version_promote(
                version=self.get_object(), user=request.user, force=incoming.validated_data["force"]
            )
        except PromotionRefused as exc:
            return Response({"detail": str(exc)}, status.HTTP_409_CONFLICT)
        return Response(self.get_serializer(version).data)

    @extend_schema(request=None, responses={200: ModelVersionSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Serve again the version that served before this one was promoted."""
        try:
            version = model_version_rollback(version=self.get_object(), user=request.user)
        except PromotionRefused as exc:
            return Response({"detail": str(exc)}, status.HTTP_409_CONFLICT)
        return Response(self.get_serializer(version).data)

    @extend_schema(request=ThresholdSerializer, responses={200: ModelVersionSerializer})
    @action(detail=True, methods=["post"])
    def threshold(self, request: Request, pk: str | None = None) -> Response:
        incoming = ThresholdSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        version = model_version_set_threshold(
            version=self.get_object(), threshold=incoming.validated_data["rejection_threshold"]
        )
        return Response(self.get_serializer(version).data)


class EvaluationSerializer(serializers.ModelSerializer):
    links = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = ["id", "model_version", "dataset", "split", "classes", "metrics", "created_at", "links"]
        read_only_fields = fields

    def get_links(self, evaluation: Evaluation) -> dict[str, str | None]:
        """The report page (for people) and the API's downloads and PNG charts (absolute URLs)."""
        request = self.context["request"]

        def url(name: str, *args: object) -> str:
            return request.build_absolute_uri(reverse(name, args=[evaluation.pk, *args]))

        charts = {f"{chart.replace('-', '_')}_png": url("evaluation-chart", chart) if getattr(evaluation, field)
                  else None for chart, field in CHARTS.items()}  # fmt: skip
        return {"report_page": url("reports:detail"), "predictions_csv": url("evaluation-predictions"), **charts}


class EvaluationViewSet(viewsets.ReadOnlyModelViewSet):
    """Evaluation reports: every metric, and links to the charts and downloads."""

    serializer_class = EvaluationSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["model_version", "dataset"]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return evaluation_list(user=self.request.user)

    @extend_schema(responses={(200, "image/png"): bytes})
    @action(detail=True, methods=["get"], url_path=r"charts/(?P<name>[a-z-]+)", url_name="chart")
    def chart(self, request: Request, pk: str | None = None, name: str = "") -> HttpResponseBase:
        """A PNG chart: `confusion`, `confusion-normalized` or `reliability`."""
        return chart_response(self.get_object(), name)

    @extend_schema(responses={(200, "text/csv"): str})
    @action(detail=True, methods=["get"], url_path="predictions", url_name="predictions")
    def predictions(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """Every evaluated image: true and predicted class, confidence, all probabilities."""
        return predictions_csv_response(self.get_object())
