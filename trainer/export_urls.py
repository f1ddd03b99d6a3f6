"""Pages of model exports (conversion to other runtimes and downloads), under /models/."""

from django.urls import URLPattern

app_name = "exports"
urlpatterns: list[URLPattern] = []
