"""Scoring runs in the API (admins): /api/v1/scoring-runs/ starts one and lists
them, /api/v1/scoring-runs/{id}/ follows one. The suggestions themselves are on
the images."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from classification.models import ScoringRun
from classification.scoring.selectors import scoring_run_list
from classification.scoring.services import scoring_start
from classifier_site.permissions import admin_user
from datasets.models import Dataset
from trainer.models import ModelVersion


class ScoringRunSerializer(serializers.ModelSerializer):
    model_version_name = serializers.CharField(source="model_version.name", read_only=True)
    progress = serializers.FloatField(
        read_only=True, allow_null=True, help_text="0 to 1; null until the total is known"
    )

    class Meta:
        model = ScoringRun
        fields = ["id", "dataset", "model_version", "model_version_name", "status", "processed", "total", "skipped",
                  "progress", "error", "created_at", "started_at", "finished_at"]  # fmt: skip
        read_only_fields = fields


class ScoringRunCreateSerializer(serializers.Serializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    model_version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(), required=False, allow_null=True,
        help_text="The version to score with; without it, the dataset's own live model.",
    )  # fmt: skip


class ScoringRunViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                        viewsets.GenericViewSet):  # fmt: skip
    """Runs of a model over a dataset (its own live model unless told): each image gets a suggested class,
    its confidence, margin (top-1 minus top-2) and entropy."""

    serializer_class = ScoringRunSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["dataset", "status"]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return scoring_run_list(user=self.request.user)

    @extend_schema(
        request=ScoringRunCreateSerializer,
        responses={
            201: ScoringRunSerializer,
            400: OpenApiResponse(description="The dataset has no live model, or it is already being scored."),
        },
    )
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        """Score a dataset with its live model (or `model_version`); a worker runs it. Poll the run for its progress."""
        incoming = ScoringRunCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        run = scoring_start(dataset=data["dataset"], version=data.get("model_version"), user=admin_user(request))
        return Response(self.get_serializer(run).data, status.HTTP_201_CREATED)
