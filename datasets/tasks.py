"""Celery tasks of datasets: take an id, call a service."""

from celery import shared_task

from datasets.exports import dataset_export_run
from datasets.services import import_run


@shared_task(name="datasets.tasks.run_import")
def run_import(import_id: int) -> None:
    import_run(import_id=import_id)


# Not routed to `gpu` (CELERY_TASK_ROUTES), so it goes to `default`: copying files into a zip
# must not wait behind training.
@shared_task(name="datasets.tasks.export_dataset")
def export_dataset(export_id: int) -> None:
    dataset_export_run(export_id=export_id)
