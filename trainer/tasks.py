"""Celery tasks: take an id, call a service. TensorFlow loads inside the service."""

from celery import shared_task

from trainer.services import training_job_run


@shared_task(name="trainer.tasks.train_job")
def train_job(job_id: int) -> None:
    training_job_run(job_id=job_id)
