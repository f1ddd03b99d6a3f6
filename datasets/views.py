"""Dataset pages (admins only)."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST

from classifier_site import throttling
from classifier_site.errors import Refused
from classifier_site.permissions import admin_user
from classifier_site.uploads import limit_upload
from datasets.exports import dataset_export_request
from datasets.forms import DatasetForm, LabelMergeForm, LabelRenameForm, UploadForm
from datasets.imaging import content_type
from datasets.labelling import label_delete, label_merge
from datasets.responses import dataset_export_response
from datasets.selectors import (
    dataset_class_counts,
    dataset_export_ready,
    dataset_export_state,
    dataset_flagged,
    dataset_get,
    dataset_imports,
    dataset_list,
    dataset_unlabelled_count,
    dataset_warnings,
    image_get,
    image_list,
    import_get,
    is_id,
    label_get,
)
from datasets.services import (
    dataset_create,
    images_delete,
    import_create,
    import_create_from_files,
    import_is_stale,
    import_progress_key,
    import_retry,
    label_rename,
)

GRID_PAGE_SIZE = 48


@staff_member_required
def dataset_list_view(request: HttpRequest) -> HttpResponse:
    return render(request, "datasets/list.html", {"datasets": dataset_list(user=request.user)})


@staff_member_required
def dataset_create_view(request: HttpRequest) -> HttpResponse:
    form = DatasetForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        dataset = dataset_create(**form.cleaned_data, user=admin_user(request))
        messages.success(request, f"Dataset {dataset.name!r} created: now add images.")
        return redirect("datasets:upload", pk=dataset.pk)
    return render(request, "datasets/create.html", {"form": form})


@staff_member_required
def dataset_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=pk)
    counts = dataset_class_counts(dataset=dataset)
    unlabelled = dataset_unlabelled_count(dataset=dataset)
    filters = {k: request.GET.get(k, "") for k in ("label", "split", "unlabelled", "review")}
    images = image_list(
        dataset=dataset,
        label=filters["label"],
        split=filters["split"],
        unlabelled=bool(filters["unlabelled"]),
        needs_review=bool(filters["review"]),
    )
    context = {
        "dataset": dataset,
        "counts": counts,
        "unlabelled": unlabelled,
        "warnings": dataset_warnings(counts=counts, unlabelled=unlabelled, flagged=dataset_flagged(dataset=dataset)),
        "labels": dataset.labels.all(),
        "imports": dataset_imports(dataset=dataset)[:10],
        "export": dataset_export_state(user=request.user, dataset=dataset),
        "page": Paginator(images, GRID_PAGE_SIZE).get_page(request.GET.get("page")),
        "filters": filters,
        "query": urlencode({k: v for k, v in filters.items() if v}),
        "chart": {
            "labels": [c.name for c in counts],
            "train": [c.train for c in counts],
            "val": [c.val for c in counts],
            "test": [c.test for c in counts],
        },
    }
    return render(request, "datasets/detail.html", context)


@staff_member_required
@require_http_methods(["GET", "POST"])
def dataset_export_view(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the dataset page's export card (an htmx partial). POST: ask for an export."""
    dataset = dataset_get(user=request.user, pk=pk)
    if request.method == "POST":
        try:
            dataset_export_request(dataset=dataset, user=admin_user(request))
        except Refused as exc:
            messages.error(request, str(exc))
        if not request.headers.get("HX-Request"):  # a plain form: back to the dataset page
            return redirect(reverse("datasets:detail", args=[pk]) + "#export")
    context = {"dataset": dataset, "export": dataset_export_state(user=request.user, dataset=dataset)}
    return render(request, "datasets/_export.html", context)


@staff_member_required
def dataset_export_download_view(request: HttpRequest, pk: int) -> FileResponse:
    dataset = dataset_get(user=request.user, pk=pk)
    return dataset_export_response(dataset_export_ready(user=request.user, dataset=dataset))


@staff_member_required
@limit_upload("IMPORT_MAX_UPLOAD_BYTES")
def dataset_upload_view(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=pk)
    if request.method == "POST" and not (verdict := throttling.import_allowed(request.user.pk)).allowed:
        wait = int(verdict.wait + 0.999)  # before the body is parsed: the API's budget, on the page too
        page = render(request, "refused.html", {"message": f"Too many uploads: try again in {wait} s."}, status=429)
        page["Retry-After"] = str(wait)
        return page
    form = UploadForm(request.POST, request.FILES) if request.method == "POST" else UploadForm()
    if request.method == "POST" and form.is_valid():
        user, label = admin_user(request), form.cleaned_data["label"]
        try:
            if form.cleaned_data["archive"]:
                record = import_create(dataset=dataset, upload=form.cleaned_data["archive"], user=user, label=label)
            else:
                record = import_create_from_files(
                    dataset=dataset, files=form.cleaned_data["images"], user=user, label=label
                )
        except ValueError as exc:
            form.add_error("label", str(exc))
        else:
            return redirect("datasets:import", pk=record.pk)
    return render(request, "datasets/upload.html", {"dataset": dataset, "form": form})


@staff_member_required
def import_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    record = import_get(user=request.user, pk=pk)
    template = "datasets/_import_progress.html" if request.headers.get("HX-Request") else "datasets/import.html"
    context = {"record": record, "live": cache.get(import_progress_key(record.pk)), "stale": import_is_stale(record)}
    return render(request, template, context)


@staff_member_required
def image_file_view(request: HttpRequest, pk: int, kind: str) -> FileResponse:
    """An image or its thumbnail, to admins only, from whatever storage holds it."""
    image = image_get(user=request.user, pk=pk)
    name = image.thumbnail.name if kind == "thumbnail" and image.thumbnail else image.file.name
    if kind not in ("thumbnail", "original") or not name:
        raise Http404("No such file.")
    served_as = content_type(name)  # the stored format's image/* type; None only for a name never written
    response = FileResponse(
        default_storage.open(name), content_type=served_as or "application/octet-stream", as_attachment=not served_as
    )
    response["Cache-Control"] = "private, max-age=86400"  # content-addressed names never change
    # An image/* type with nosniff is what keeps markup inside a file from ever being
    # rendered or run (datasets/imaging.py says why); the sandbox covers a file opened
    # on its own, and CORP stops other sites embedding it.
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


@staff_member_required
@require_POST
def import_retry_view(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        import_retry(record=import_get(user=request.user, pk=pk))
    except ValueError as exc:
        messages.error(request, str(exc))
    return redirect("datasets:import", pk=pk)


@staff_member_required
@require_POST
def images_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=pk)
    ids = [int(i) for i in request.POST.getlist("image") if is_id(i)]
    count = images_delete(dataset=dataset, ids=ids)
    messages.success(request, f"Deleted {count} images.")
    return redirect(f"{reverse('datasets:detail', args=[dataset.pk])}?{request.POST.get('query', '')}")


@staff_member_required
def label_edit_view(request: HttpRequest, pk: int) -> HttpResponse:
    label = label_get(user=request.user, pk=pk)
    rename = LabelRenameForm(request.POST if "rename" in request.POST else None, initial={"name": label.name})
    merge = LabelMergeForm(request.POST if "merge" in request.POST else None, label=label)
    try:
        if rename.is_valid():
            label_rename(label=label, name=rename.cleaned_data["name"])
            messages.success(request, f"Renamed to {label.name!r}.")
            return redirect("datasets:detail", pk=label.dataset_id)
        if merge.is_valid():
            target = label_merge(source=label, target=merge.cleaned_data["into"], user=request.user)
            messages.success(request, f"Merged into {target.name!r}.")
            return redirect("datasets:detail", pk=label.dataset_id)
        if request.method == "POST" and "delete" in request.POST:
            count = label_delete(label=label, user=request.user)
            messages.success(request, f"Class deleted; its {count} images are now unlabelled.")
            return redirect("datasets:detail", pk=label.dataset_id)
    except ValueError as exc:
        rename.add_error("name", str(exc))
    return render(request, "datasets/label.html", {"label": label, "rename": rename, "merge": merge})
