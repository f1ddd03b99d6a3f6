"""The labelling workbench: a keyboard-first grid of one dataset's images (admins only).

The page only reads; every label change goes through the dataset API's label, undo and
accept-suggestions actions, so the workbench and API clients share one service and
one optimistic lock.
"""

from dataclasses import dataclass

from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode

from datasets.models import Split
from datasets.selectors import (
    WORKBENCH_ORDERS,
    WORKBENCH_SHOWS,
    ClassCount,
    dataset_class_counts,
    dataset_get,
    dataset_unlabelled_count,
    is_id,
    workbench_images,
)

WORKBENCH_PAGE_SIZE = 60
# Classes sorted by name take these keys in order; further classes are reached
# through the bulk bar's dropdown only.
CLASS_KEYS = "1234567890qwertyuiopasdfghjklzxcvbnm"
FILTERS = ("show", "label", "split", "order", "images")


@dataclass(frozen=True)
class WorkbenchClass:
    name: str
    key: str  # "" beyond the keyboard's reach
    count: int  # labelled images, every split


def workbench_classes(counts: list[ClassCount]) -> list[WorkbenchClass]:
    """Classes by name with their keys: a class named by a single key character gets
    that key (digits "0"-"9" keep their own digits), the others the free keys in order."""
    ordered = sorted(counts, key=lambda c: c.name)
    keys: dict[str, str] = {}
    for c in ordered:
        own = c.name.lower()
        if len(own) == 1 and own in CLASS_KEYS and own not in keys.values():
            keys[c.name] = own
    free = iter(k for k in CLASS_KEYS if k not in keys.values())
    for c in ordered:
        if c.name not in keys:
            keys[c.name] = next(free, "")
    return [WorkbenchClass(c.name, keys[c.name], c.total) for c in ordered]


@staff_member_required
def workbench_view(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=pk)
    filters = {name: request.GET.get(name, "") for name in FILTERS}
    page = Paginator(workbench_images(dataset=dataset, **filters), WORKBENCH_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    counts = dataset_class_counts(dataset=dataset)
    classes = workbench_classes(counts)
    labelled = sum(c.count for c in classes)
    context = {
        "dataset": dataset,
        "page": page,
        "filters": filters,
        "query": urlencode({k: v for k, v in filters.items() if v}),
        "shows": WORKBENCH_SHOWS,
        "orders": WORKBENCH_ORDERS,
        "splits": Split.choices,
        "labels": sorted(counts, key=lambda c: c.name),
        "classes": classes,
        "labelled": labelled,
        "total": labelled + dataset_unlabelled_count(dataset=dataset),
        "config": _config(dataset.pk, classes, filters),
    }
    return render(request, "datasets/workbench.html", context)


def _config(pk: int, classes: list[WorkbenchClass], filters: dict[str, str]) -> dict[str, object]:
    """What workbench.js needs: the key map, the API's URLs and the filter as applied."""
    return {
        "classes": [{"name": c.name, "key": c.key} for c in classes],
        "keys": CLASS_KEYS,
        "urls": {
            "label": reverse("dataset-label", args=[pk]),
            "undo": reverse("dataset-undo", args=[pk]),
            "accept": reverse("dataset-accept-suggestions", args=[pk]),
        },
        # As the accept-suggestions action reads it: an unknown `show` is "all", as the page shows.
        "filter": {
            "show": filters["show"] if filters["show"] in dict(WORKBENCH_SHOWS) else "all",
            "label_id": int(filters["label"]) if is_id(filters["label"]) else None,
            "split": filters["split"] if filters["split"] in Split.values else "",
        },
    }
