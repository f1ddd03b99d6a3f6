"""Training job pages (admins only)."""

import uuid

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from classifier_site.permissions import admin_user
from classifier_site.runs import RunStatus
from datasets.selectors import dataset_list
from trainer.jobs.forms import TrainingJobForm
from trainer.jobs.selectors import job_get, job_list_filtered
from trainer.jobs.services import TrainingRefused, training_job_cancel, training_job_repeat, training_job_start
from trainer.ml.config import ARCHITECTURES
from trainer.reports.selectors import evaluation_of_job


@staff_member_required
def job_list_view(request: HttpRequest) -> HttpResponse:
    filters = {key: request.GET.get(key, "").strip() for key in ("dataset", "status", "arch")}
    jobs = job_list_filtered(user=request.user, **filters)
    page = Paginator(jobs, 25).get_page(request.GET.get("page"))
    query = urlencode({k: v for k, v in filters.items() if v})
    context = {
        "page": page,
        "filters": filters,
        "query": query,
        "datasets": dataset_list(user=request.user),
        "statuses": RunStatus.choices,
        "architectures": ARCHITECTURES,
    }
    return render(request, "trainer/job_list.html", context)


@staff_member_required
def job_create_view(request: HttpRequest) -> HttpResponse:
    initial = {"dataset": request.GET.get("dataset"), "request_key": uuid.uuid4().hex}
    form = TrainingJobForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            job = training_job_start(
                dataset=form.cleaned_data["dataset"], config=form.config, user=admin_user(request),
                request_key=form.cleaned_data["request_key"],
            )  # fmt: skip
        except TrainingRefused as exc:
            form.add_error(None, str(exc))
        else:
            said = "was already started by the same click" if job.replayed else "queued"
            messages.success(request, f"Training job {job.pk} {said}.")
            return redirect("trainer:detail", pk=job.pk)
    return render(request, "trainer/job_create.html", {"form": form})


@staff_member_required
def job_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = job_get(user=request.user, pk=pk)
    evaluation = evaluation_of_job(user=request.user, job=job)
    return render(request, "trainer/job_detail.html", {"job": job, "evaluation": evaluation})


@staff_member_required
def job_progress_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the job page; htmx polls it until the job finishes."""
    job = job_get(user=request.user, pk=pk)
    evaluation = evaluation_of_job(user=request.user, job=job) if job.status == RunStatus.SUCCEEDED else None
    return render(request, "trainer/_job_progress.html", {"job": job, "evaluation": evaluation})


@staff_member_required
@require_POST
def job_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = training_job_cancel(job=job_get(user=request.user, pk=pk))
    messages.info(request, f"Job {job.pk}: {job.get_status_display().lower()}, cancel requested.")
    return redirect("trainer:detail", pk=job.pk)


@staff_member_required
@require_POST
def job_repeat_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = training_job_repeat(job=job_get(user=request.user, pk=pk), user=admin_user(request))
    messages.success(request, f"Training job {job.pk} queued: job {pk} again, same settings and images.")
    return redirect("trainer:detail", pk=job.pk)
