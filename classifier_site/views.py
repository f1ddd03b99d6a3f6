"""Site-wide pages: the dashboard and the liveness probe."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from classifier_site.permissions import is_admin
from datasets.selectors import dataset_list
from trainer.jobs.selectors import job_list
from trainer.registry.selectors import model_versions_live


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    context = {
        "datasets": dataset_list(user=request.user)[:10],
        "jobs": job_list(user=request.user)[:10],
        "live": model_versions_live(),
        "is_admin": is_admin(request.user),
    }
    return render(request, "dashboard.html", context)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and answering; /readyz checks what it depends on."""
    return HttpResponse("ok\n", content_type="text/plain")
