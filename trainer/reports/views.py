"""Evaluation report pages: the report, a confusion-matrix cell's images, the
downloads, relabelling from the report, and comparing jobs."""

from typing import Any

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from classifier_site.redirects import local_url_or
from datasets.labelling import image_label_set
from datasets.models import ChangeSource
from datasets.services import image_queue_for_review
from trainer.jobs.selectors import job_list
from trainer.models import Evaluation, Prediction
from trainer.reports.explain import NothingToExplain, prediction_overlay
from trainer.reports.responses import chart_response, predictions_csv_response, report_document
from trainer.reports.selectors import (
    evaluation_get,
    prediction_cell,
    prediction_examples,
    prediction_get,
    prediction_mistakes,
)
from trainer.reports.tables import class_rows, compare_jobs, confusion_rows, summary_rows

CELL_PAGE_SIZE = 48


@staff_member_required
def report_view(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = evaluation_get(user=request.user, pk=pk)
    metrics = evaluation.metrics
    context: dict[str, Any] = {
        "evaluation": evaluation,
        "job": evaluation.model_version.job,
        "metrics": metrics,
        "summary": summary_rows(metrics),
        "classes": class_rows(evaluation),
        "matrix": confusion_rows(evaluation),
        "mistakes": prediction_mistakes(evaluation=evaluation),
        "examples": [
            (name, rows)
            for name, rows in zip(evaluation.classes, prediction_examples(evaluation=evaluation).values(), strict=True)
        ],
    }
    return render(request, "trainer/report.html", context)


@staff_member_required
def cell_view(request: HttpRequest, pk: int, true_index: int, predicted_index: int) -> HttpResponse:
    """The test images of one matrix cell (true class X predicted as Y); a fragment for htmx."""
    evaluation = evaluation_get(user=request.user, pk=pk)
    if not (0 <= true_index < len(evaluation.classes) and 0 <= predicted_index < len(evaluation.classes)):
        raise Http404("No such cell.")
    page = Paginator(prediction_cell(evaluation=evaluation, true_index=true_index, predicted_index=predicted_index),
                     CELL_PAGE_SIZE).get_page(request.GET.get("page"))  # fmt: skip
    context = {
        "evaluation": evaluation,
        "page": page,
        "true_name": evaluation.classes[true_index],
        "predicted_name": evaluation.classes[predicted_index],
        "true_index": true_index,
        "predicted_index": predicted_index,
    }
    template = "trainer/_report_cell.html" if request.headers.get("HX-Request") else "trainer/report_cell.html"
    return render(request, template, context)


@staff_member_required
def chart_view(request: HttpRequest, pk: int, name: str) -> FileResponse:
    return chart_response(evaluation_get(user=request.user, pk=pk), name)


@staff_member_required
def report_json_view(request: HttpRequest, pk: int) -> JsonResponse:
    evaluation = evaluation_get(user=request.user, pk=pk)
    response = JsonResponse(report_document(evaluation), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="evaluation-{evaluation.pk}.json"'
    return response


@staff_member_required
def predictions_csv_view(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    return predictions_csv_response(evaluation_get(user=request.user, pk=pk))


@staff_member_required
def explain_view(request: HttpRequest, pk: int, prediction_pk: int) -> HttpResponse:
    """Where the model looked in one evaluated image (a PNG; 404 saying why when it cannot)."""
    prediction = prediction_get(evaluation=evaluation_get(user=request.user, pk=pk), pk=prediction_pk)
    try:
        png = prediction_overlay(prediction)
    except NothingToExplain as exc:
        raise Http404(str(exc)) from None
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"  # an evaluation never changes
    return response


@staff_member_required
@require_POST
def relabel_view(request: HttpRequest, pk: int, prediction_pk: int) -> HttpResponse:
    """ "The label was wrong": give the image the class posted (usually the predicted one)."""
    evaluation = evaluation_get(user=request.user, pk=pk)
    prediction = prediction_get(evaluation=evaluation, pk=prediction_pk)
    name = request.POST.get("label", "")
    if prediction.image is None:
        messages.error(request, "That image has been deleted since the evaluation.")
    elif name not in evaluation.classes:
        messages.error(request, f"Unknown class {name!r}.")
    else:
        image_label_set(image=prediction.image, label_name=name, user=request.user, source=ChangeSource.REPORT)
        messages.success(request, f"Image {prediction.image_id} is now labelled {name}.")
    return _after_action(request, evaluation, prediction)


@staff_member_required
@require_POST
def queue_view(request: HttpRequest, pk: int, prediction_pk: int) -> HttpResponse:
    """Not sure of the label: put the image in its dataset's labelling queue."""
    evaluation = evaluation_get(user=request.user, pk=pk)
    prediction = prediction_get(evaluation=evaluation, pk=prediction_pk)
    if prediction.image is None:
        messages.error(request, "That image has been deleted since the evaluation.")
    else:
        image_queue_for_review(image=prediction.image)
        dataset = prediction.image.dataset
        messages.success(request, f"Image {prediction.image_id} is in the labelling queue of {dataset}.")
    return _after_action(request, evaluation, prediction)


def _after_action(request: HttpRequest, evaluation: Evaluation, prediction: Prediction) -> HttpResponse:
    """htmx swaps the tile in place; a plain form goes back where it came from (same site only)."""
    if request.headers.get("HX-Request"):
        return render(request, "trainer/_prediction_updated.html", {"prediction": prediction})
    return redirect(
        local_url_or(request, request.POST.get("next", ""), reverse("reports:detail", args=[evaluation.pk]))
    )


@staff_member_required
def compare_view(request: HttpRequest) -> HttpResponse:
    """Two or more jobs side by side: metrics, per-class deltas against the first, config differences."""
    ids = [int(v) for v in request.GET.getlist("jobs") if v.isdigit()]
    jobs = list(job_list(user=request.user).filter(pk__in=ids, model_version__isnull=False))
    jobs.sort(key=lambda job: ids.index(job.pk))
    choices = job_list(user=request.user).filter(model_version__isnull=False).order_by("-id")[:200]
    context = {"comparison": compare_jobs(jobs) if len(jobs) >= 2 else None, "asked": ids, "choices": choices}
    return render(request, "trainer/compare.html", context)
