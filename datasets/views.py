"""Dataset pages (admins only)."""

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from datasets.selectors import dataset_class_counts, dataset_get, dataset_list, dataset_unlabelled_count


@staff_member_required
def dataset_list_view(request: HttpRequest) -> HttpResponse:
    return render(request, "datasets/list.html", {"datasets": dataset_list(user=request.user)})


@staff_member_required
def dataset_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, pk=pk)
    context = {
        "dataset": dataset,
        "counts": dataset_class_counts(dataset=dataset),
        "unlabelled": dataset_unlabelled_count(dataset=dataset),
    }
    return render(request, "datasets/detail.html", context)
