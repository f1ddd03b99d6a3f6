"""Sweep pages (admins only), under /sweeps/."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from classifier_site.permissions import admin_user
from trainer.sweeps.forms import SweepForm
from trainer.sweeps.selectors import sweep_compare_ids, sweep_curves, sweep_get, sweep_list, sweep_trials
from trainer.sweeps.services import SweepRefused, sweep_cancel, sweep_start


@staff_member_required
def sweep_list_view(request: HttpRequest) -> HttpResponse:
    page = Paginator(sweep_list(user=request.user), 25).get_page(request.GET.get("page"))
    return render(request, "trainer/sweep_list.html", {"page": page})


@staff_member_required
def sweep_create_view(request: HttpRequest) -> HttpResponse:
    form = SweepForm(request.POST or None, initial={"dataset": request.GET.get("dataset")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            sweep = sweep_start(
                dataset=data["dataset"], space=data["space"], base=data["base"], method=data["method"],
                budget=data["budget"], early_stopping=data["early_stopping"], promote_best=data["promote_best"],
                user=admin_user(request),
            )  # fmt: skip
        except SweepRefused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Sweep {sweep.pk} started: {sweep.trials.count()} trials queued.")
            return redirect("sweeps:detail", pk=sweep.pk)
    return render(request, "trainer/sweep_create.html", {"form": form})


@staff_member_required
def sweep_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "trainer/sweep_detail.html", _context(request, pk))


@staff_member_required
def sweep_progress_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the sweep page; htmx polls it until the sweep ends."""
    return render(request, "trainer/_sweep_progress.html", _context(request, pk))


def _context(request: HttpRequest, pk: int) -> dict[str, object]:
    sweep = sweep_get(user=request.user, pk=pk)
    trials = sweep_trials(sweep)
    return {"sweep": sweep, "trials": trials, "curves": sweep_curves(trials), "compare": sweep_compare_ids(trials)}


@staff_member_required
@require_POST
def sweep_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    sweep = sweep_cancel(sweep=sweep_get(user=request.user, pk=pk))
    messages.info(request, f"Sweep {sweep.pk}: {sweep.get_status_display().lower()}.")
    return redirect("sweeps:detail", pk=sweep.pk)
