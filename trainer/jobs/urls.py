"""Training job pages, under /jobs/."""

from django.urls import path

from trainer.jobs import views

app_name = "trainer"
urlpatterns = [
    path("", views.job_list_view, name="list"),
    path("new/", views.job_create_view, name="create"),
    path("<int:pk>/", views.job_detail_view, name="detail"),
    path("<int:pk>/progress/", views.job_progress_view, name="progress"),
    path("<int:pk>/cancel/", views.job_cancel_view, name="cancel"),
    path("<int:pk>/repeat/", views.job_repeat_view, name="repeat"),
]
