"""Scoring a dataset with the promoted model (the workbench's suggestions), under /models/score/."""

from django.urls import path

from classification.scoring import views

app_name = "scoring"
urlpatterns = [
    path("<int:dataset_pk>/", views.score_dataset_view, name="start"),
    path("runs/<int:pk>/", views.scoring_status_view, name="status"),
    path("datasets/<int:dataset_pk>/", views.scoring_panel_view, name="panel"),
]
