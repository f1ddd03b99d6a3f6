"""A sweep's trials while they run: whether a trial goes on at a rung, and ending the
sweep (naming its best trial, promoting it when asked) once its last trial has ended.

Training jobs call these (trainer.jobs.services), and so does the reaper, as a backstop
for a sweep whose last trial's worker died; so this module imports no job service.
"""

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from classifier_site.errors import Refused
from classifier_site.runs import ACTIVE, RunStatus
from trainer.ml.sweep import METRIC, goes_on, rung_cut, rungs
from trainer.models import Sweep, TrainingJob
from trainer.registry.services import model_version_promote

logger = logging.getLogger(__name__)


def trial_verdict(*, sweep_id: int, epoch: int, epochs: int, logs: dict[str, float]) -> str:
    """'' while the trial goes on after `epoch` (of its `epochs`); else why it stops here."""
    sweep = Sweep.objects.filter(pk=sweep_id).only("early_stopping", "eta", "first_rung", "status").first()
    score = logs.get(METRIC)
    if sweep is None or not sweep.early_stopping or sweep.is_finished or score is None:
        return ""
    if epoch not in rungs(first=sweep.first_rung, eta=sweep.eta, epochs=epochs):
        return ""
    scores = scores_at_rung(sweep_id, epoch)  # this trial's own included: its epoch is written first
    if goes_on(score, scores, eta=sweep.eta):
        return ""
    cut = rung_cut(scores, eta=sweep.eta)
    return (
        f"Stopped early by its sweep at epoch {epoch}: validation accuracy {score:.3f}, below {cut:.3f} "
        f"(the top 1/{sweep.eta} of the {len(scores)} trials that reached epoch {epoch} go on)."
    )


def scores_at_rung(sweep_id: int, epoch: int) -> list[float]:
    """Every trial's validation score after `epoch`, of those that got there."""
    histories = TrainingJob.objects.filter(sweep_id=sweep_id).values_list("history", flat=True)
    return [float(e[METRIC]) for history in histories for e in history if e.get("epoch") == epoch and METRIC in e]


def trial_score(history: list[dict[str, Any]]) -> float | None:
    """A trial's validation score: its best epoch's (the weights early stopping keeps)."""
    scores = [float(e[METRIC]) for e in history if METRIC in e]
    return max(scores) if scores else None


def sweep_settle(*, sweep_id: int) -> bool:
    """End the sweep once none of its trials is queued or running: the best succeeded trial
    by validation score wins, and is promoted when the sweep asks. Idempotent, and a
    compare-and-set: of two trials ending at once, one settles the sweep. True if this call did."""
    if TrainingJob.objects.filter(sweep_id=sweep_id, status__in=ACTIVE).exists():
        return False
    best, score = _best_trial(sweep_id)
    status = RunStatus.SUCCEEDED if best else RunStatus.FAILED
    outcome = _outcome(best, score)
    settled = Sweep.objects.filter(pk=sweep_id, status=RunStatus.RUNNING).update(
        status=status, best_job=best, best_score=score, outcome=outcome, finished_at=timezone.now()
    )
    if settled and best is not None:
        _promote_if_asked(sweep_id, best, outcome)
    return bool(settled)


def _outcome(best: TrainingJob | None, score: float | None) -> str:
    if best is None:
        return "No trial succeeded: see the trials' errors."
    return f"Best: trial job {best.pk}" + (f", validation accuracy {score:.3f}." if score is not None else ".")


def sweeps_settle_all() -> list[int]:
    """The reaper's pass: settle running sweeps whose trials have all ended (the last trial's
    own settle is lost when its worker dies between finishing and settling)."""
    running = Sweep.objects.filter(status=RunStatus.RUNNING).values_list("pk", flat=True)
    return [pk for pk in running if sweep_settle(sweep_id=pk)]


def _best_trial(sweep_id: int) -> tuple[TrainingJob | None, float | None]:
    done = TrainingJob.objects.filter(sweep_id=sweep_id, status=RunStatus.SUCCEEDED, model_version__isnull=False)
    scored = [(trial_score(job.history), job) for job in done.only("pk", "history").order_by("pk")]
    if not scored:
        return None, None
    # The highest score wins (a trial without one only when none has one); ties go to the earlier trial.
    score, job = max(scored, key=lambda pair: (pair[0] is not None, pair[0] or 0.0, -pair[1].pk))
    return job, score


def _promote_if_asked(sweep_id: int, best: TrainingJob, outcome: str) -> None:
    sweep = Sweep.objects.select_related("created_by").get(pk=sweep_id)
    if not sweep.promote_best:
        return
    try:
        with transaction.atomic():
            version = model_version_promote(version=best.model_version, user=sweep.created_by)
        said = f" Promoted as v{version.pk}."
    except Refused as exc:  # the macro-F1 gate: the served version is better
        said = f" Not promoted: {exc}"
    except Exception as exc:  # the sweep has ended either way; say why the promotion did not happen
        logger.exception("sweep %s: promoting job %s's model failed", sweep_id, best.pk)
        said = f" Not promoted: {type(exc).__name__}: {exc}"
    Sweep.objects.filter(pk=sweep_id).update(outcome=outcome + said)
