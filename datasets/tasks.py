"""Celery tasks of datasets: take an id, call a service."""

from celery import shared_task

from datasets.services import import_run


@shared_task(name="datasets.tasks.run_import")
def run_import(import_id: int) -> None:
    import_run(import_id=import_id)
