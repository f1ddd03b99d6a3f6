from django.urls import path

from datasets import views
from datasets.workbench_views import workbench_view

app_name = "datasets"
urlpatterns = [
    path("", views.dataset_list_view, name="list"),
    path("new/", views.dataset_create_view, name="create"),
    path("<int:pk>/", views.dataset_detail_view, name="detail"),
    path("<int:pk>/label/", workbench_view, name="workbench"),
    path("<int:pk>/upload/", views.dataset_upload_view, name="upload"),
    path("<int:pk>/images/delete/", views.images_delete_view, name="images-delete"),
    path("<int:pk>/export/", views.dataset_export_view, name="export"),
    path("<int:pk>/export/download/", views.dataset_export_download_view, name="export-download"),
    path("imports/<int:pk>/", views.import_detail_view, name="import"),
    path("imports/<int:pk>/retry/", views.import_retry_view, name="import-retry"),
    path("classes/<int:pk>/", views.label_edit_view, name="label"),
    path("images/<int:pk>/<str:kind>/", views.image_file_view, name="image-file"),
]
