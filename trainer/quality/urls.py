"""Data-quality pages, under /quality/datasets/<id>/ and /quality/runs/<id>/."""

from django.urls import path

from trainer.quality import views

app_name = "quality"
urlpatterns = [
    path("datasets/<int:dataset_pk>/", views.quality_report_view, name="report"),
    path("datasets/<int:dataset_pk>/analyse/", views.quality_start_view, name="start"),
    path("datasets/<int:dataset_pk>/similar/<int:image_pk>/", views.similar_view, name="similar"),
    path("datasets/<int:dataset_pk>/similar-to-upload/", views.similar_upload_view, name="similar-upload"),
    path("runs/<int:pk>/groups/<int:group>/keep/", views.duplicates_keep_view, name="keep"),
    path("runs/<int:pk>/groups/<int:group>/move/", views.duplicates_move_view, name="move"),
]
