"""Training jobs in the API (admins): /api/v1/jobs/ lists and starts them, /api/v1/jobs/{id}/
follows one, and its cancel and repeat actions."""

import django_filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from classifier_site.permissions import admin_user
from datasets.models import Dataset
from trainer.jobs.selectors import job_list
from trainer.jobs.services import training_job_cancel, training_job_repeat, training_job_start
from trainer.ml.config import ConfigError, TrainConfig, architectures
from trainer.models import TrainingJob


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

    @extend_schema(
        parameters=[OpenApiParameter(
            "Idempotency-Key", str, OpenApiParameter.HEADER,
            description="Any string up to 64 characters: a second request with the same key (from the same user) "
            "answers 200 with the job the first one started, instead of starting another.",
        )],
        responses={201: TrainingJobSerializer, 200: TrainingJobSerializer},
    )  # fmt: skip
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        incoming = self.get_serializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        config = incoming.validated_data.get("config") or TrainConfig.defaults()
        job = training_job_start(
            dataset=incoming.validated_data["dataset"], config=config, user=admin_user(request),
            request_key=request.headers.get("Idempotency-Key", "").strip(),
        )  # fmt: skip
        replayed = job.replayed
        job.refresh_from_db()
        return Response(self.get_serializer(job).data, status.HTTP_200_OK if replayed else status.HTTP_201_CREATED)

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
