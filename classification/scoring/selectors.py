"""Reads of scoring runs, always on behalf of a user (the latest of a dataset, a list, one)."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classification.models import ScoringRun
from classifier_site.permissions import is_admin
from datasets.models import Dataset


def scoring_runs() -> QuerySet[ScoringRun]:
    """Every run, with what its pages and its worker read of it."""
    return ScoringRun.objects.select_related("dataset", "model_version", "model_version__dataset")


def scoring_latest(*, dataset: Dataset) -> ScoringRun | None:
    """The dataset's newest run, whatever its status: what its suggestions came from, or are coming from."""
    return scoring_runs().filter(dataset=dataset).first()


def scoring_run_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[ScoringRun]:
    if not is_admin(user):
        return ScoringRun.objects.none()
    return scoring_runs()


def scoring_run_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> ScoringRun:
    try:
        return scoring_run_list(user=user).get(pk=pk)
    except ScoringRun.DoesNotExist:
        raise Http404("No such scoring run.") from None
