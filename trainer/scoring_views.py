"""Scoring pages (admins): start a run of the promoted model over a dataset, and the
run's status partial that htmx polls while it runs. The partial
(templates/trainer/_scoring_status.html) is included where suggestions are shown."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from classifier_site.permissions import admin_user
from classifier_site.redirects import local_url_or
from datasets.selectors import dataset_get
from trainer.scoring import ScoringRefused, scoring_run_get, scoring_start


@staff_member_required
@require_POST
def score_dataset_view(request: HttpRequest, dataset_pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=dataset_pk)
    try:
        run = scoring_start(dataset=dataset, user=admin_user(request))
    except ScoringRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Scoring {dataset.name} with {run.model_version.name}: suggestions follow shortly.")
    return redirect(_back(request, request.POST.get("next", ""), dataset.pk))


@staff_member_required
@require_GET
def scoring_status_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The status partial of one run; once it has finished, htmx hears `scoring-finished`."""
    run = scoring_run_get(user=request.user, pk=pk)
    context = {
        "scoring": run,
        "dataset": run.dataset,
        "scoring_next": _back(request, request.GET.get("next", ""), run.dataset_id),
    }
    response = render(request, "trainer/_scoring_status.html", context)
    if run.is_finished:
        response["HX-Trigger"] = "scoring-finished"  # pages showing suggestions may reload them
    return response


def _back(request: HttpRequest, target: str, dataset_pk: int) -> str:
    """`target` if it is a page of this site, else the dataset's page."""
    return local_url_or(request, target, reverse("datasets:detail", args=[dataset_pk]))
