from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from health_check.views import HealthCheckView

from classifier_site import views
from trainer import backbone_views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "readyz",
        HealthCheckView.as_view(
            checks=["health_check.checks.Database", "health_check.checks.Storage", "classifier_site.health.Broker"]
        ),
        name="readyz",
    ),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("datasets/", include("datasets.urls")),
    path("jobs/", include("trainer.urls")),
    path("backbones/", backbone_views.backbone_list_view, name="backbones"),
    path("evaluations/", include("trainer.report_urls")),
    path("models/", include("trainer.model_urls")),
    path("models/", include("trainer.export_urls")),
    path("predict/", include("classification.urls")),
    path("api/v1/", include("classifier_site.api_urls")),
]
