"""Writes to sweeps: start one (its trials are ordinary training jobs, queued at once and
fanned out over the `gpu` workers) and cancel one. How trials stop early and how a sweep
ends live in trainer.sweeps.trials."""

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from classifier_site.errors import Refused
from classifier_site.runs import ACTIVE, RunStatus
from datasets.models import Dataset
from trainer.jobs.services import training_job_cancel, training_job_start
from trainer.ml.config import ConfigError, TrainConfig
from trainer.ml.sweep import Space, trial_params, typed_fields, typed_space
from trainer.models import Sweep


class SweepRefused(Refused):
    """The sweep cannot start as asked; the message names the field to fix."""


def sweep_start(
    *,
    dataset: Dataset,
    space: Space,
    base: dict[str, Any] | None = None,
    method: str = "grid",
    budget: int = 8,
    seed: int = 0,
    early_stopping: bool = True,
    eta: int = 3,
    first_rung: int = 1,
    promote_best: bool = False,
    user: User | None = None,
) -> Sweep:
    """Record the sweep and one queued job per trial, all on one frozen snapshot (so trials
    differ only in their configs), sent to the workers once the transaction commits."""
    base, space = _typed(base or {}, space)
    configs = _trial_configs(base, space, method=method, budget=budget, seed=seed)
    if not 2 <= eta <= 10 or first_rung < 1:
        raise SweepRefused("eta: must be between 2 and 10, and first_rung at least 1")
    with transaction.atomic():
        sweep = Sweep.objects.create(
            dataset=dataset, base_config=base, space=space, method=method, budget=budget, seed=seed,
            early_stopping=early_stopping, eta=eta, first_rung=first_rung, promote_best=promote_best,
            created_by=user,
        )  # fmt: skip
        snapshot = None
        for config in configs:
            job = training_job_start(dataset=dataset, config=config, user=user, snapshot=snapshot)
            job.sweep = sweep
            job.save(update_fields=["sweep"])
            snapshot = snapshot or job.snapshot
    return sweep


def _typed(base: dict[str, Any], space: Space) -> tuple[dict[str, Any], Space]:
    """Both as their config fields' types, so the sweep stores 3 epochs, not "3" (from a form or --set)."""
    try:
        return typed_fields(base), typed_space(space)
    except ConfigError as exc:
        raise SweepRefused(str(exc)) from exc


def _trial_configs(base: dict[str, Any], space: Space, **how: Any) -> list[TrainConfig]:
    try:
        params = trial_params(space, **how)
        # Each trial starts from its own architecture's defaults: a backbone in the space gets its image size.
        return [TrainConfig.from_dict({**base, **trial}) for trial in params]
    except ConfigError as exc:
        raise SweepRefused(str(exc)) from exc


def sweep_cancel(*, sweep: Sweep) -> Sweep:
    """Cancel every trial still queued or running; the sweep ends cancelled, naming the
    best of the trials that had finished."""
    if Sweep.objects.filter(pk=sweep.pk, status=RunStatus.RUNNING).update(status=RunStatus.CANCELLED):
        for job in sweep.trials.filter(status__in=ACTIVE):
            training_job_cancel(job=job)
        Sweep.objects.filter(pk=sweep.pk).update(finished_at=timezone.now(), outcome="Cancelled by a user.")
    sweep.refresh_from_db()
    return sweep
