from django.urls import path

from datasets import views

app_name = "datasets"
urlpatterns = [
    path("", views.dataset_list_view, name="list"),
    path("<int:pk>/", views.dataset_detail_view, name="detail"),
]
