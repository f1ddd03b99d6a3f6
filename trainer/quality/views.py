"""Data-quality pages (admins), under /quality/datasets/<id>/: the report (start an
analysis, its progress, near-duplicate groups with keep-one and move, the leaks' effect
on the test score, label issues, outliers, small classes), and "more like this", which
opens the labelling workbench on the nearest images, to select and label at once (from an
image of the dataset, or from an uploaded photo)."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from classifier_site.errors import Refused
from classifier_site.permissions import admin_user
from classifier_site.uploads import limit_upload
from datasets.imaging import ImageRejected
from datasets.models import Image, Split
from datasets.selectors import dataset_class_counts, dataset_get
from trainer.ml import backbones
from trainer.quality.selectors import (
    duplicate_groups,
    leak_effect,
    quality_latest,
    quality_latest_done,
    quality_run_get,
    similar_images,
    similar_to_upload,
)
from trainer.quality.services import duplicates_keep_one, duplicates_move, quality_start
from trainer.quality.vectors import VectorsUnavailable

GROUPS_PER_PAGE = 20
SIMILAR_SHOWN = 24
OUTLIERS_SHOWN = 40  # the most unusual; the workbench's outliers filter shows them all


@staff_member_required
@require_GET
def quality_report_view(request: HttpRequest, dataset_pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=dataset_pk)
    done = quality_latest_done(dataset=dataset)
    groups = duplicate_groups(done) if done else []
    outliers = Image.objects.filter(dataset=dataset, outlier_score__isnull=False).order_by("outlier_score")
    counts = dataset_class_counts(dataset=dataset)
    context = {
        "dataset": dataset,
        "latest": quality_latest(dataset=dataset),
        "done": done,
        "groups": Paginator(groups, GROUPS_PER_PAGE).get_page(request.GET.get("page")),
        "leaks": sum(g.leak for g in groups),
        "conflicts": sum(g.conflict for g in groups),
        "effect": leak_effect(done, groups) if done else None,
        "outliers": outliers.select_related("label")[:OUTLIERS_SHOWN],
        "outlier_count": outliers.count(),
        "label_issues": Image.objects.filter(dataset=dataset, label_issue_quality__isnull=False).count(),
        "backbones": [b.name for b in backbones.installed()],
        "splits": Split.choices,
        # What keep-one and move change: the labelled images per split, now.
        "split_totals": {split: sum(getattr(c, split) for c in counts) for split in Split.values},
        "similar_shown": SIMILAR_SHOWN,
    }
    return render(request, "trainer/quality_report.html", context)


@staff_member_required
@require_POST
def quality_start_view(request: HttpRequest, dataset_pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=dataset_pk)
    try:
        run = quality_start(dataset=dataset, backbone=request.POST.get("backbone", ""), user=admin_user(request))
    except Refused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Analysing {dataset.name} with {run.backbone}: the report fills in when it is done.")
    return redirect("quality:report", dataset.pk)


@staff_member_required
@require_POST
def duplicates_keep_view(request: HttpRequest, pk: int, group: int) -> HttpResponse:
    run = quality_run_get(user=request.user, pk=pk)
    try:
        deleted = duplicates_keep_one(run=run, group=group, keep=int(request.POST.get("keep", "0")))
    except (Refused, ValueError) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Kept one image of the group; deleted {deleted}.")
    return redirect(_report(run.dataset_id, request))


@staff_member_required
@require_POST
def duplicates_move_view(request: HttpRequest, pk: int, group: int) -> HttpResponse:
    run = quality_run_get(user=request.user, pk=pk)
    try:
        moved = duplicates_move(run=run, group=group, split=request.POST.get("split", ""))
    except Refused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Moved {moved} image{'s' if moved != 1 else ''} of the group into one split.")
    return redirect(_report(run.dataset_id, request))


@staff_member_required
@require_GET
def similar_view(request: HttpRequest, dataset_pk: int, image_pk: int) -> HttpResponse:
    """More like this: the workbench showing the image and its nearest neighbours, nearest first."""
    dataset = dataset_get(user=request.user, pk=dataset_pk)
    done = quality_latest_done(dataset=dataset)
    if done is None:
        messages.error(request, f"Analyse {dataset.name} first: similar images come from its analysis.")
        return redirect("quality:report", dataset.pk)
    try:
        found = similar_images(done, image_id=image_pk, k=SIMILAR_SHOWN)
    except VectorsUnavailable as exc:
        messages.error(request, str(exc))
        return redirect("datasets:workbench", dataset.pk)
    return _workbench_showing(dataset.pk, [image_pk, *(n.image.pk for n in found)])


@staff_member_required
@require_POST
@limit_upload("PREDICT_MAX_UPLOAD_BYTES")
def similar_upload_view(request: HttpRequest, dataset_pk: int) -> HttpResponse:
    """More like this from an uploaded photo: the workbench showing the nearest images, nearest first."""
    dataset = dataset_get(user=request.user, pk=dataset_pk)
    done, upload = quality_latest_done(dataset=dataset), request.FILES.get("image")
    if done is None or upload is None:
        messages.error(request, "Choose an image." if done else f"Analyse {dataset.name} first.")
        return redirect("quality:report", dataset.pk)
    try:
        found = similar_to_upload(done, data=upload.read(), k=SIMILAR_SHOWN)
    except (ImageRejected, VectorsUnavailable) as exc:
        messages.error(request, f"{upload.name}: {exc}")
        return redirect("quality:report", dataset.pk)
    if not found:  # every indexed image deleted since the analysis
        messages.error(request, f"No image of {dataset.name} is left from analysis {done.pk}: analyse again.")
        return redirect("quality:report", dataset.pk)
    messages.success(request, f"The {len(found)} images most like {upload.name}, nearest first.")
    return _workbench_showing(dataset.pk, [n.image.pk for n in found])


def _workbench_showing(dataset_pk: int, ids: list[int]) -> HttpResponse:
    """The labelling workbench on these images only, in this order."""
    shown = ",".join(str(pk) for pk in ids)
    return redirect(f"{reverse('datasets:workbench', args=[dataset_pk])}?images={shown}")


def _report(dataset_pk: int, request: HttpRequest) -> str:
    page = request.POST.get("page", "")
    return reverse("quality:report", args=[dataset_pk]) + (f"?page={page}" if page.isdigit() else "")
