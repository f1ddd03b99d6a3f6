from django.urls import path

from classification import views

app_name = "classification"
urlpatterns = [
    path("", views.predict_view, name="predict"),
    path("correct", views.correction_view, name="correct"),
    path("live/<int:dataset_pk>/", views.live_view, name="live"),
]
