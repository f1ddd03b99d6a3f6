"""The model registry pages, and scoring datasets with the promoted model, under /models/."""

from django.urls import path

from trainer import model_views, scoring_views

app_name = "models"
urlpatterns = [
    path("", model_views.model_list_view, name="list"),
    path("<int:pk>/", model_views.model_detail_view, name="detail"),
    path("<int:pk>/promote", model_views.model_promote_view, name="promote"),
    path("<int:pk>/rollback", model_views.model_rollback_view, name="rollback"),
    path("<int:pk>/threshold", model_views.model_threshold_view, name="threshold"),
    path("score/<int:dataset_pk>/", scoring_views.score_dataset_view, name="score-dataset"),
    path("score/runs/<int:pk>/", scoring_views.scoring_status_view, name="scoring-status"),
]
