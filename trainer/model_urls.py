"""The model registry pages, under /models/."""

from django.urls import URLPattern

app_name = "models"
urlpatterns: list[URLPattern] = []
