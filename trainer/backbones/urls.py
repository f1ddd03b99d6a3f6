"""The backbone catalogue page, under /backbones/."""

from django.urls import path

from trainer.backbones import views

app_name = "backbones"
urlpatterns = [path("", views.backbone_list_view, name="list")]
