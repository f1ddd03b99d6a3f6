"""Reads of sweeps for admins: the list, one sweep's trials with their varied fields,
scores and curves."""

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from trainer.ml.sweep import METRIC
from trainer.models import Sweep, TrainingJob
from trainer.sweeps.trials import trial_score


def sweep_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Sweep]:
    if not is_admin(user):
        return Sweep.objects.none()
    return Sweep.objects.select_related("dataset", "best_job").annotate(trial_count=Count("trials"))


def sweep_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> Sweep:
    try:
        return sweep_list(user=user).get(pk=pk)
    except Sweep.DoesNotExist:
        raise Http404("No such sweep.") from None


@dataclass(frozen=True)
class Trial:
    job: TrainingJob
    params: dict[str, Any]  # the fields the sweep varies, as this trial has them
    score: float | None  # its best epoch's validation accuracy
    is_best: bool

    @property
    def label(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.params.items())


def sweep_trials(sweep: Sweep) -> list[Trial]:
    """Every trial, in the order they were made."""
    jobs = sweep.trials.select_related("model_version").defer("snapshot").order_by("pk")
    return [Trial(job, _varied(sweep, job), trial_score(job.history), job.pk == sweep.best_job_id) for job in jobs]


def _varied(sweep: Sweep, job: TrainingJob) -> dict[str, Any]:
    return {name: job.config.get(name) for name in sweep.space}


def sweep_curves(trials: list[Trial]) -> list[dict[str, Any]]:
    """Validation accuracy per epoch of each trial, for the sweep page's chart."""
    return [_curve(t) for t in trials]


def _curve(trial: Trial) -> dict[str, Any]:
    points = [[e["epoch"], e[METRIC]] for e in trial.job.history if METRIC in e]
    return {"job": trial.job.pk, "label": f"job {trial.job.pk}: {trial.label}", "best": trial.is_best, "points": points}


def sweep_compare_ids(trials: list[Trial]) -> list[int]:
    """The trials with a model, best first: what the compare page takes."""
    kept = [t for t in trials if hasattr(t.job, "model_version")]
    return [t.job.pk for t in sorted(kept, key=lambda t: (not t.is_best, -(t.score or 0.0)))]
