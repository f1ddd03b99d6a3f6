"""Training jobs through the services, as the worker runs them (in this process)."""

import subprocess
import sys

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import IntegrityError

from datasets.services import dataset_create, images_add
from tests.conftest import ROOT, subprocess_env, train_now
from tests.images import colour_items
from trainer.ml.config import TrainConfig
from trainer.ml.files import sha256_file
from trainer.models import JobStatus, ModelVersion, TrainingJob
from trainer.selectors import model_version_serving
from trainer.services import (
    TrainingRefused,
    model_version_promote,
    training_job_cancel,
    training_job_run,
    training_job_start,
)


@pytest.mark.django_db
def test_job_trains_and_records_a_verifiable_model(colour_dataset, settings):
    version = train_now(colour_dataset)
    job = version.job
    assert job.status == JobStatus.SUCCEEDED and job.progress == 1.0
    assert job.device == "CPU" and job.host and job.started_at and job.finished_at
    assert [h["epoch"] for h in job.history] == [1, 2, 3, 4]
    assert version.classes == ["blue", "green", "red"]
    assert version.metrics["accuracy"] >= 0.8  # three flat colours are easy
    path = settings.MEDIA_ROOT / version.file.name
    assert sha256_file(path) == version.sha256
    assert job.snapshot["hash"] and len(job.snapshot["images"]) == 120


@pytest.mark.django_db
def test_training_needs_two_labelled_classes():
    dataset = dataset_create(name="one class")
    images_add(dataset=dataset, items=colour_items(5, classes=("red",)))
    with pytest.raises(TrainingRefused, match="at least two classes"):
        training_job_start(dataset=dataset, config=TrainConfig(), enqueue=False)


@pytest.mark.django_db
def test_duplicate_delivery_does_nothing(colour_dataset):
    version = train_now(colour_dataset, epochs=1)
    finished_at = version.job.finished_at
    training_job_run(job_id=version.job.pk)  # the broker delivers the same task again
    version.job.refresh_from_db()
    assert version.job.finished_at == finished_at
    assert ModelVersion.objects.count() == 1


@pytest.mark.django_db
def test_cancel_queued_job_is_immediate_and_final(colour_dataset):
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(), enqueue=False)
    assert training_job_cancel(job=job).status == JobStatus.CANCELLED
    training_job_run(job_id=job.pk)  # a late delivery cannot revive it
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_cancel_requested_while_running_stops_after_an_epoch(colour_dataset, monkeypatch):
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(epochs=20), enqueue=False)
    monkeypatch.setattr("trainer.services.JobReporter.should_stop", lambda self: True)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.epoch == 1
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_a_crash_in_training_fails_the_job_with_the_reason(colour_dataset, monkeypatch):
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(), enqueue=False)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 4 GB")

    monkeypatch.setattr("trainer.snapshots.load_array", out_of_memory)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error == "MemoryError: cannot allocate 4 GB"


@pytest.mark.django_db
def test_missing_image_files_are_skipped_and_reported(colour_dataset):
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(), enqueue=False)
    for image in colour_dataset.images.all():
        default_storage.delete(image.file.name)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "training split is empty" in job.error


@pytest.mark.django_db
def test_serving_version_is_newest_until_one_is_promoted(colour_dataset):
    first = train_now(colour_dataset, epochs=1)
    second = train_now(colour_dataset, epochs=1)
    assert model_version_serving() == second
    model_version_promote(version=first)
    assert model_version_serving() == first
    model_version_promote(version=second)
    assert list(ModelVersion.objects.filter(is_promoted=True)) == [second]
    with pytest.raises(IntegrityError):  # the database refuses a second promoted row
        ModelVersion.objects.filter(pk=first.pk).update(is_promoted=True)


@pytest.mark.django_db
def test_train_command_inline(colour_dataset, capsys):
    call_command("train", "colours", "--epochs", "1", "--inline", "--json")
    assert '"status": "succeeded"' in capsys.readouterr().out
    with pytest.raises(CommandError, match="no dataset named"):
        call_command("train", "nope")
    with pytest.raises(CommandError, match="epochs: must be between"):
        call_command("train", "colours", "--epochs", "0")


@pytest.mark.django_db(transaction=True)
def test_broker_down_fails_the_job_with_a_clear_error():
    dataset = dataset_create(name="colours")
    images_add(dataset=dataset, items=colour_items(4))
    env = subprocess_env() | {"CELERY_BROKER_URL": "redis://127.0.0.1:9/0"}  # nothing listens on port 9
    run = subprocess.run([sys.executable, "manage.py", "train", "colours"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0
    assert "Could not reach the task broker" in run.stderr
    job = TrainingJob.objects.get()
    assert job.status == JobStatus.FAILED and "broker" in job.error
    assert default_storage.exists("models") is False
