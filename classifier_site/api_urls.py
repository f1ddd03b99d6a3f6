"""REST API v1: routes of every app, the OpenAPI schema and its docs."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from classification.api import DatasetPredictView, PredictView
from classification.capture_api import LiveCaptureView
from classification.scoring.api import ScoringRunViewSet
from datasets.api import DatasetViewSet, ImageViewSet, ImportViewSet, LabelViewSet
from datasets.labelling_api import LabelChangeViewSet
from trainer.jobs.api import TrainingJobViewSet
from trainer.quality.api import QualityRunViewSet
from trainer.registry.api import ModelVersionViewSet
from trainer.reports.api import EvaluationViewSet
from trainer.sweeps.api import SweepViewSet

router = DefaultRouter()
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("images", ImageViewSet, basename="image")
router.register("labels", LabelViewSet, basename="label")
router.register("label-changes", LabelChangeViewSet, basename="label-change")
router.register("imports", ImportViewSet, basename="import")
router.register("jobs", TrainingJobViewSet, basename="job")
router.register("sweeps", SweepViewSet, basename="sweep")
router.register("models", ModelVersionViewSet, basename="model")
router.register("evaluations", EvaluationViewSet, basename="evaluation")
router.register("scoring-runs", ScoringRunViewSet, basename="scoring-run")
router.register("quality-runs", QualityRunViewSet, basename="quality-run")

urlpatterns = [
    path("predict/", PredictView.as_view(), name="api-predict"),
    path("datasets/<int:dataset_id>/predict/", DatasetPredictView.as_view(), name="api-dataset-predict"),
    path("datasets/<int:dataset_id>/live-capture/", LiveCaptureView.as_view(), name="api-live-capture"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include(router.urls)),
]
