"""Celery tasks of serving: take an id, call a service."""

from celery import shared_task

from classification.scoring.services import scoring_run


# Not routed to `gpu` either: inference over a dataset is minutes on a CPU, and
# suggestions should not wait behind hours of training. Acknowledged late (the
# settings): a redelivery after a worker died finds the run claimed and does nothing;
# the run turns stale and a new one may start (classification.scoring.services.scoring_start).
@shared_task(name="classification.tasks.score_dataset")
def score_dataset(run_id: int) -> None:
    scoring_run(run_id=run_id)
