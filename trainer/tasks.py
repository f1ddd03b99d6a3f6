"""Celery tasks: take an id, call a service. TensorFlow loads inside the service."""

import logging

from celery import shared_task

from trainer.jobs.services import training_job_run, training_jobs_reap
from trainer.registry.exports import model_export_run

logger = logging.getLogger(__name__)


@shared_task(name="trainer.tasks.train_job")
def train_job(job_id: int) -> None:
    training_job_run(job_id=job_id)


# Not routed to `gpu` (CELERY_TASK_ROUTES), so it goes to `default`: converting a
# trained model takes seconds on a CPU and must not wait behind hours of training.
@shared_task(name="trainer.tasks.export_model")
def export_model(export_id: int) -> None:
    model_export_run(export_id=export_id)


@shared_task(name="trainer.tasks.reap_stale_jobs", ignore_result=True)
def reap_stale_jobs() -> None:
    """Periodic (celery beat): re-queue or fail jobs whose worker died, and send again
    the messages of jobs queued for longer than TRAIN_REPUBLISH_SECONDS."""
    reaped = training_jobs_reap()
    if reaped.requeued or reaped.failed or reaped.cancelled or reaped.republished:
        logger.warning(
            "reaper: re-queued %s, failed %s, cancelled %s, sent again %s",
            reaped.requeued, reaped.failed, reaped.cancelled, reaped.republished,
        )  # fmt: skip
