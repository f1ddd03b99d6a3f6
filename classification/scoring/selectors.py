"""Model assistance: the promoted model scores every image of a dataset, and each
Image row keeps its suggestion (a class name of the model), confidence, margin and
entropy, for the labelling workbench to sort, filter and review by.

A run is a row (classification.models.ScoringRun) queued here and claimed by a worker
with a conditional UPDATE, like exports. TensorFlow loads inside `scoring_run`
only (a worker, the `score_dataset` command), never in web processes.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classification.models import ScoringRun
from classification.scoring.services import _runs
from classifier_site.permissions import is_admin
from datasets.models import Dataset


def scoring_latest(*, dataset: Dataset) -> ScoringRun | None:
    """The dataset's newest run, whatever its status: what its suggestions came from, or are coming from."""
    return _runs().filter(dataset=dataset).first()


def scoring_run_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[ScoringRun]:
    if not is_admin(user):
        return ScoringRun.objects.none()
    return _runs()


def scoring_run_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> ScoringRun:
    try:
        return scoring_run_list(user=user).get(pk=pk)
    except ScoringRun.DoesNotExist:
        raise Http404("No such scoring run.") from None
