"""The model registry's pages under /models/: versions, promotion, exports and their downloads."""

from django.urls import path, register_converter

from trainer.registry import views
from trainer.registry.exports import FORMAT_PATTERN


class ExportFormatConverter:
    """Exactly the export formats: any other name is not a URL of this site."""

    regex = FORMAT_PATTERN

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ExportFormatConverter, "export_format")

app_name = "models"
urlpatterns = [
    path("", views.model_list_view, name="list"),
    path("default", views.serving_default_view, name="default"),
    path("<int:pk>/", views.model_detail_view, name="detail"),
    path("<int:pk>/promote", views.model_promote_view, name="promote"),
    path("<int:pk>/rollback", views.model_rollback_view, name="rollback"),
    path("<int:pk>/threshold", views.model_threshold_view, name="threshold"),
]
# Their own namespace ("exports:list", "exports:download"), under the same /models/ prefix.
export_urlpatterns = [
    path("<int:pk>/exports/", views.exports_view, name="list"),
    path("<int:pk>/exports/<export_format:export_format>/download", views.export_download_view, name="download"),
]
