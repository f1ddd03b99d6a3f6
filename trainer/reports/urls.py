"""Evaluation report pages, under /evaluations/."""

from django.urls import path

from trainer.reports import views

app_name = "reports"
urlpatterns = [
    path("compare/", views.compare_view, name="compare"),
    path("<int:pk>/", views.report_view, name="detail"),
    path("<int:pk>/cells/<int:true_index>/<int:predicted_index>/", views.cell_view, name="cell"),
    path("<int:pk>/charts/<str:name>.png", views.chart_view, name="chart"),
    path("<int:pk>/report.json", views.report_json_view, name="json"),
    path("<int:pk>/predictions.csv", views.predictions_csv_view, name="csv"),
    path("<int:pk>/predictions/<int:prediction_pk>/explain.png", views.explain_view, name="explain"),
    path("<int:pk>/predictions/<int:prediction_pk>/relabel/", views.relabel_view, name="relabel"),
    path("<int:pk>/predictions/<int:prediction_pk>/queue/", views.queue_view, name="queue"),
]
