"""Training job pages (admins only)."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from classifier_site.permissions import admin_user
from trainer.forms import TrainingJobForm
from trainer.selectors import job_get, job_list
from trainer.services import TrainingRefused, training_job_cancel, training_job_start


@staff_member_required
def job_list_view(request: HttpRequest) -> HttpResponse:
    jobs = job_list(user=request.user)
    if dataset := request.GET.get("dataset", "").strip():
        jobs = jobs.filter(dataset_id=dataset) if dataset.isdigit() else jobs.none()
    page = Paginator(jobs, 25).get_page(request.GET.get("page"))
    return render(request, "trainer/job_list.html", {"page": page, "dataset": dataset})


@staff_member_required
def job_create_view(request: HttpRequest) -> HttpResponse:
    form = TrainingJobForm(request.POST or None, initial={"dataset": request.GET.get("dataset")})
    if request.method == "POST" and form.is_valid():
        try:
            user = admin_user(request)
            job = training_job_start(dataset=form.cleaned_data["dataset"], config=form.config, user=user)
        except TrainingRefused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Training job {job.pk} queued.")
            return redirect("trainer:detail", pk=job.pk)
    return render(request, "trainer/job_create.html", {"form": form})


@staff_member_required
def job_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = job_get(user=request.user, pk=pk)
    return render(request, "trainer/job_detail.html", {"job": job})


@staff_member_required
def job_progress_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the job page; htmx polls it until the job finishes."""
    job = job_get(user=request.user, pk=pk)
    return render(request, "trainer/_job_progress.html", {"job": job})


@staff_member_required
@require_POST
def job_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = training_job_cancel(job=job_get(user=request.user, pk=pk))
    messages.info(request, f"Job {job.pk}: {job.get_status_display().lower()}, cancel requested.")
    return redirect("trainer:detail", pk=job.pk)
