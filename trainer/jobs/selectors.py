"""Reads of training jobs, on behalf of a user (and, for verify_storage, the files they own)."""

from collections.abc import Iterator

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from classifier_site.storage_audit import Reference
from trainer.jobs.feature_store import stored_feature_references
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


def training_stored_files() -> Iterator[Reference]:
    """Files of training for verify_storage: each unfinished job's checkpoint and the stored
    feature caches of every job's snapshot, with their SHA-256."""
    rows = TrainingJob.objects.exclude(checkpoint_file="").values_list("pk", "checkpoint_file", "checkpoint_sha256")
    for pk, name, sha in rows.iterator(chunk_size=2000):
        yield Reference(name, f"training job {pk} (checkpoint)", sha)
    snapshots = TrainingJob.objects.values_list("snapshot__hash", flat=True).distinct()
    yield from stored_feature_references({h for h in snapshots if isinstance(h, str)})
