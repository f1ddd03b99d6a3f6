"""Sweep pages, under /sweeps/."""

from django.urls import path

from trainer.sweeps import views

app_name = "sweeps"
urlpatterns = [
    path("", views.sweep_list_view, name="list"),
    path("new/", views.sweep_create_view, name="create"),
    path("<int:pk>/", views.sweep_detail_view, name="detail"),
    path("<int:pk>/progress/", views.sweep_progress_view, name="progress"),
    path("<int:pk>/cancel/", views.sweep_cancel_view, name="cancel"),
]
