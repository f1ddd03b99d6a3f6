"""Celery tasks: take an id, call a service. TensorFlow loads inside the service."""

import logging
import signal
from types import FrameType
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_shutting_down
from django.conf import settings

from trainer.jobs.services import SHUTTING_DOWN, training_job_run, training_jobs_hand_back
from trainer.quality.services import quality_run
from trainer.registry.exports import model_export_run

logger = logging.getLogger(__name__)


# The hard limit: a run that could not stop itself at TRAIN_TIME_LIMIT (stuck in native
# code) is killed by its worker; the reaper then fails the job, saying why.
HARD_TIME_LIMIT = settings.TRAIN_TIME_LIMIT + settings.TRAIN_TIME_LIMIT_GRACE


@shared_task(bind=True, name="trainer.tasks.train_job", time_limit=HARD_TIME_LIMIT)
def train_job(self: Task, job_id: int) -> None:
    if self.request.is_eager:  # run by the caller (CELERY_TASK_ALWAYS_EAGER): its process, its signals
        training_job_run(job_id=job_id)
        return
    previous = signal.signal(signal.SIGTERM, _hand_back_on_sigterm)
    try:
        training_job_run(job_id=job_id, worker=self.request.hostname or "", kill_on_stall=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        SHUTTING_DOWN.clear()


def _hand_back_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SIGTERM sent to the training process itself (a process group stopped at once): the run
    # checkpoints and hands the job back at its next progress write, then the task returns.
    SHUTTING_DOWN.set()


@worker_shutting_down.connect
def _hand_back_running_jobs(sender: str, sig: str, how: str, exitcode: int, **_: Any) -> None:
    """In the worker's main process, on a warm shutdown (SIGTERM on a deploy): tell this
    worker's running jobs to checkpoint and go back to the queue, so the shutdown waits
    seconds, not for the rest of a training run."""
    count = training_jobs_hand_back(worker=sender)
    if count:
        logger.warning("worker %s is shutting down (%s): %s running job(s) asked to hand back", sender, how, count)


# Not routed to `gpu` (CELERY_TASK_ROUTES), so it goes to `default`: converting a
# trained model takes seconds on a CPU and must not wait behind hours of training.
@shared_task(name="trainer.tasks.export_model")
def export_model(export_id: int) -> None:
    model_export_run(export_id=export_id)


# On `default` like scoring: a feature pass over a dataset takes seconds to minutes.
@shared_task(name="trainer.tasks.analyse_dataset")
def analyse_dataset(run_id: int) -> None:
    quality_run(run_id=run_id)
