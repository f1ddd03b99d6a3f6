"""The model registry (admins): every version grouped by dataset, each dataset's live
one and the site's default, promotion and rollback, the rejection threshold, and
the way to each version's exports and report."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from classifier_site.errors import Refused
from classifier_site.permissions import admin_user
from datasets.selectors import dataset_list
from trainer.registry.exports import ExportRefused, model_export_request
from trainer.registry.responses import export_file_response
from trainer.registry.selectors import (
    model_export_ready,
    model_export_table,
    model_version_get,
    model_version_list,
    model_version_previous,
    model_versions_live,
    promotion_history,
    served_table,
    serving_default_choice,
)
from trainer.registry.services import (
    PromotionRefused,
    model_version_promote,
    model_version_rollback,
    model_version_set_threshold,
    promotion_gate_reason,
    serving_default_set,
)
from trainer.reports.selectors import evaluation_of_job


@staff_member_required
def model_list_view(request: HttpRequest) -> HttpResponse:
    """Each dataset's live model, then every version grouped by dataset (newest first within one)."""
    versions = model_version_list(user=request.user).order_by("dataset__name", "dataset_id", "-created_at", "-id")
    context = {
        "page": Paginator(versions, 25).get_page(request.GET.get("page")),
        "live": model_versions_live(),
        "default_id": served_table().default,
        "default_chosen": serving_default_choice(),
        "history": promotion_history(user=request.user),
    }
    return render(request, "trainer/model_list.html", context)


@staff_member_required
@require_POST
def serving_default_view(request: HttpRequest) -> HttpResponse:
    """POST `dataset` (an id; empty: the most recently promoted): predictions naming no dataset go there."""
    raw = request.POST.get("dataset", "")
    dataset = dataset_list(user=request.user).filter(pk=raw).first() if raw.isdigit() else None
    if raw and dataset is None:
        messages.error(request, f"No dataset {raw!r}.")
        return redirect("models:list")
    try:
        serving_default_set(dataset=dataset, user=admin_user(request))
    except Refused as exc:
        messages.error(request, str(exc))
    else:
        where = f"{dataset.name}'s live model" if dataset else "the most recently promoted model"
        messages.success(request, f"Predictions that name no dataset now go to {where}.")
    return redirect("models:list")


@staff_member_required
def model_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    version = model_version_get(user=request.user, pk=pk)
    context = {
        "version": version,
        "evaluation": evaluation_of_job(user=request.user, job=version.job),
        "rejection": version.metrics.get("rejection") or {},
        "gate": None if version.is_promoted else promotion_gate_reason(version=version),
        "previous": model_version_previous(current=version) if version.is_promoted else None,
        "is_default": version.is_promoted and served_table().default == version.dataset_id,
    }
    return render(request, "trainer/model_detail.html", context)


@staff_member_required
@require_POST
def model_promote_view(request: HttpRequest, pk: int) -> HttpResponse:
    version = model_version_get(user=request.user, pk=pk)
    try:
        model_version_promote(version=version, user=admin_user(request), force=request.POST.get("force") == "1")
    except PromotionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"{version.name} is now {version.dataset.name}'s live model; predictors switch within a second."
        )
    return redirect("models:detail", pk=pk)


@staff_member_required
@require_POST
def model_rollback_view(request: HttpRequest, pk: int) -> HttpResponse:
    version = model_version_get(user=request.user, pk=pk)
    try:
        previous = model_version_rollback(version=version, user=admin_user(request))
    except PromotionRefused as exc:
        messages.error(request, str(exc))
        return redirect("models:detail", pk=pk)
    messages.success(request, f"Rolled back: {previous.name} is served again.")
    return redirect("models:detail", pk=previous.pk)


@staff_member_required
@require_POST
def model_threshold_view(request: HttpRequest, pk: int) -> HttpResponse:
    version = model_version_get(user=request.user, pk=pk)
    try:
        threshold = float(request.POST.get("rejection_threshold", ""))
        model_version_set_threshold(version=version, threshold=threshold)
    except ValueError:
        messages.error(request, "The threshold is a probability, between 0 and 1.")
    else:
        messages.success(request, f"Predictions below {threshold:.2f} now answer “unknown”.")
    return redirect("models:detail", pk=pk)


@staff_member_required
@require_http_methods(["GET", "POST"])
def exports_view(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the export table (an htmx partial). POST `format`: ask for that export."""
    version = model_version_get(user=request.user, pk=pk)
    error = ""
    if request.method == "POST":
        try:
            model_export_request(version=version, format=request.POST.get("format", ""))
        except ExportRefused as exc:
            error = str(exc)
        if not request.headers.get("HX-Request"):  # a plain form: back to the model page
            if error:
                messages.error(request, error)
            return redirect(reverse("models:detail", args=[pk]) + "#exports")
    context = {"version": version, "exports": model_export_table(user=request.user, version=version), "error": error}
    return render(request, "trainer/_model_exports.html", context, status=400 if error else 200)


@staff_member_required
def export_download_view(request: HttpRequest, pk: int, export_format: str) -> FileResponse:
    version = model_version_get(user=request.user, pk=pk)
    return export_file_response(model_export_ready(user=request.user, version=version, format=export_format))
