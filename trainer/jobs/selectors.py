"""Reads of training jobs, always on behalf of a user."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from trainer.models import TrainingJob


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


# --- model exports ------------------------------------------------------------------
