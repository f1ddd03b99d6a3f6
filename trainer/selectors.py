"""Reads of jobs and model versions, always on behalf of a user."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from trainer.models import JobStatus, ModelVersion, TrainingJob


def job_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[TrainingJob]:
    if not is_admin(user):
        return TrainingJob.objects.none()
    return TrainingJob.objects.select_related("dataset", "created_by", "model_version").defer("snapshot")


def job_list_filtered(
    *, user: AbstractBaseUser | AnonymousUser, dataset: str = "", status: str = "", arch: str = ""
) -> QuerySet[TrainingJob]:
    """Jobs narrowed by the list page's filters; values that cannot match give no rows."""
    jobs = job_list(user=user)
    if dataset:
        jobs = jobs.filter(dataset_id=dataset) if dataset.isdigit() else jobs.none()
    if status:
        jobs = jobs.filter(status=status)
    if arch:
        jobs = jobs.filter(config__arch=arch)
    return jobs


def job_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> TrainingJob:
    try:
        return job_list(user=user).get(pk=pk)
    except TrainingJob.DoesNotExist:
        raise Http404("No such job.") from None


def model_version_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[ModelVersion]:
    if not is_admin(user):
        return ModelVersion.objects.none()
    return ModelVersion.objects.select_related("dataset", "job")


def model_version_serving() -> ModelVersion | None:
    """The promoted version; until one is promoted, the newest finished one."""
    versions = ModelVersion.objects.select_related("dataset").filter(job__status=JobStatus.SUCCEEDED)
    return versions.filter(is_promoted=True).first() or versions.order_by("-created_at", "-id").first()
