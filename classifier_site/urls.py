from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from health_check.views import HealthCheckView

from classifier_site import views
from trainer.registry.urls import export_urlpatterns

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "readyz",
        HealthCheckView.as_view(
            checks=[
                "health_check.checks.Database",
                "health_check.checks.Storage",
                "classifier_site.health.Broker",
                "classifier_site.health.Reaper",
            ]
        ),
        name="readyz",
    ),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("datasets/", include("datasets.urls")),
    path("jobs/", include("trainer.jobs.urls")),
    path("sweeps/", include("trainer.sweeps.urls")),
    path("backbones/", include("trainer.backbones.urls")),
    path("evaluations/", include("trainer.reports.urls")),
    path("models/score/", include("classification.scoring.urls")),
    path("models/", include("trainer.registry.urls")),
    path("models/", include((export_urlpatterns, "exports"))),
    path("predict/", include("classification.urls")),
    path("quality/", include("trainer.quality.urls")),
    path("api/v1/", include("classifier_site.api_urls")),
]

# A database that is down answers 503 (JSON on the API), not Django's HTML 500 page.
handler500 = "classifier_site.errors.server_error"
