"""Scoring pages (admins): start a run of the promoted model over a dataset, and the
status partial (templates/classification/_scoring_status.html) that pages showing
suggestions fetch: the dataset's panel once, then one run's status every 2 s while it runs."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from classification.scoring.selectors import scoring_latest, scoring_run_get
from classification.scoring.services import ScoringRefused, scoring_start
from classifier_site.permissions import admin_user
from classifier_site.redirects import local_url_or
from datasets.selectors import dataset_get


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
    response = render(request, "classification/_scoring_status.html", context)
    if run.is_finished:
        response["HX-Trigger"] = "scoring-finished"  # pages showing suggestions may reload them
    return response


@staff_member_required
@require_GET
def scoring_panel_view(request: HttpRequest, dataset_pk: int) -> HttpResponse:
    """A dataset's latest run (or none yet) and the button to score it again."""
    dataset = dataset_get(user=request.user, pk=dataset_pk)
    context = {
        "scoring": scoring_latest(dataset=dataset),
        "dataset": dataset,
        "scoring_next": _back(request, request.GET.get("next", ""), dataset.pk),
    }
    return render(request, "classification/_scoring_status.html", context)


def _back(request: HttpRequest, target: str, dataset_pk: int) -> str:
    """`target` if it is a page of this site, else the dataset's page."""
    return local_url_or(request, target, reverse("datasets:detail", args=[dataset_pk]))
