"""Sweeps in the API (admins): /api/v1/sweeps/ lists and starts them, /api/v1/sweeps/{id}/
follows one with its trials, and its cancel action."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from classifier_site.permissions import admin_user
from datasets.models import Dataset
from trainer.ml.sweep import MAX_TRIALS, METHODS
from trainer.models import Sweep
from trainer.sweeps.selectors import sweep_list, sweep_trials
from trainer.sweeps.services import sweep_cancel, sweep_start


class TrialSerializer(serializers.Serializer):
    job = serializers.IntegerField(source="job.pk")
    params = serializers.DictField(help_text="The fields the sweep varies, as this trial has them.")
    status = serializers.CharField(source="job.status")
    epoch = serializers.IntegerField(source="job.epoch", help_text="Epochs completed.")
    epochs = serializers.IntegerField(source="job.epochs")
    attempts = serializers.IntegerField(source="job.attempts")
    score = serializers.FloatField(allow_null=True, help_text="Its best epoch's validation accuracy.")
    stopped_at_rung = serializers.IntegerField(source="job.stopped_at_rung", allow_null=True,
                                               help_text="The epoch where successive halving stopped it.")  # fmt: skip
    error = serializers.CharField(source="job.error")
    model_version = serializers.SerializerMethodField()
    is_best = serializers.BooleanField()

    def get_model_version(self, trial: Any) -> int | None:
        version = getattr(trial.job, "model_version", None)
        return version.pk if version else None


class SweepSerializer(serializers.ModelSerializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    space = serializers.JSONField(help_text='Config fields and their values: {"learning_rate": [0.1, 0.4]}, or '
                                  'for method random also ranges: {"weight_decay": {"low": 1e-4, "high": 1e-2, '
                                  '"log": true}}.')  # fmt: skip
    base_config = serializers.JSONField(required=False, help_text="Config fields every trial shares.")
    method = serializers.ChoiceField(choices=METHODS, default="grid")
    budget = serializers.IntegerField(min_value=1, max_value=MAX_TRIALS, default=8)
    trials = serializers.SerializerMethodField()

    class Meta:
        model = Sweep
        fields = [
            "id", "dataset", "base_config", "space", "method", "budget", "seed", "early_stopping", "eta",
            "first_rung", "promote_best", "status", "best_job", "best_score", "outcome", "created_at",
            "finished_at", "trials",
        ]  # fmt: skip
        read_only_fields = ["status", "best_job", "best_score", "outcome", "created_at", "finished_at"]

    @extend_schema(responses=TrialSerializer(many=True))  # type: ignore[misc]
    def get_trials(self, sweep: Sweep) -> list[dict[str, Any]]:
        return TrialSerializer(sweep_trials(sweep), many=True).data  # type: ignore[return-value]

    def validate_space(self, value: object) -> object:
        if not isinstance(value, dict):
            raise serializers.ValidationError("space must be an object of config fields")
        return value

    def validate_base_config(self, value: object) -> object:
        if not isinstance(value, dict):
            raise serializers.ValidationError("base_config must be an object of config fields")
        return value


class SweepViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = SweepSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["dataset", "status"]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return sweep_list(user=self.request.user)

    @extend_schema(responses={201: SweepSerializer})
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        incoming = self.get_serializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        sweep = sweep_start(
            dataset=data["dataset"], space=data["space"], base=data.get("base_config") or {}, method=data["method"],
            budget=data["budget"], seed=data.get("seed", 0), early_stopping=data.get("early_stopping", True),
            eta=data.get("eta", 3), first_rung=data.get("first_rung", 1), promote_best=data.get("promote_best", False),
            user=admin_user(request),
        )  # fmt: skip
        return Response(self.get_serializer(sweep).data, status.HTTP_201_CREATED)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return Response(self.get_serializer(sweep_cancel(sweep=self.get_object())).data)
