"""Evaluation reports in the API (admins): /api/v1/evaluations/, each with its charts and
the CSV of every prediction."""

from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request

from trainer.models import Evaluation
from trainer.reports.responses import CHARTS, chart_response, predictions_csv_response
from trainer.reports.selectors import evaluation_list


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
