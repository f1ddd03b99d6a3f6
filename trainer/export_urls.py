"""Pages of model exports (conversion to other runtimes and downloads), under /models/."""

from django.urls import path, register_converter

from trainer import export_views as views
from trainer.exports import FORMAT_PATTERN


class ExportFormatConverter:
    """Exactly the export formats: any other name is not a URL of this site."""

    regex = FORMAT_PATTERN

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ExportFormatConverter, "export_format")

app_name = "exports"
urlpatterns = [
    path("<int:pk>/exports/", views.exports_view, name="list"),
    path("<int:pk>/exports/<export_format:export_format>/download", views.export_download_view, name="download"),
]
