"""A job's checkpoints in media storage (issue 17): a job re-queued to a worker that has
none of the first worker's files resumes from the stored checkpoint."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone

from classifier_site.runs import RunStatus
from trainer.jobs import services
from trainer.jobs.services import training_job_run, training_job_start, training_jobs_reap
from trainer.ml.config import TrainConfig
from trainer.models import TrainingJob

pytestmark = pytest.mark.django_db

CONFIG = {"arch": "baseline", "epochs": 3, "batch_size": 16, "image_size": 32, "early_stopping_patience": 0}


def _dies_after(monkeypatch, epochs: int) -> None:
    """The worker process dies after `epochs` epochs (what Python sees of a SIGKILL: nothing after)."""
    real = services.JobReporter.epoch_end

    def epoch_end(self, epoch, logs):
        real(self, epoch, logs)
        if epoch + 1 >= epochs:
            raise SystemExit("worker killed")

    monkeypatch.setattr(services.JobReporter, "epoch_end", epoch_end)


def _killed_on_worker_a(colour_dataset, monkeypatch, tmp_path, settings) -> TrainingJob:
    settings.TRAIN_CHECKPOINT_UPLOAD_SECONDS = 0
    settings.TRAIN_WORK_DIR = tmp_path / "worker-a"
    job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict(CONFIG), enqueue=False)
    with monkeypatch.context() as patch:
        _dies_after(patch, 2)
        with pytest.raises(SystemExit):
            training_job_run(job_id=job.pk)
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert training_jobs_reap().requeued == [job.pk]
    job.refresh_from_db()
    assert job.checkpoint_file.startswith(f"checkpoints/job-{job.pk}/") and len(job.checkpoint_sha256) == 64
    settings.TRAIN_WORK_DIR = tmp_path / "worker-b"  # another host: nothing of worker A's folder
    return job


def _messages(job: TrainingJob) -> list[str]:
    return [e["message"] for e in TrainingJob.objects.get(pk=job.pk).events]


def test_a_job_requeued_to_another_worker_resumes_from_the_checkpoint_in_storage(
    colour_dataset, monkeypatch, tmp_path, settings
):
    job = _killed_on_worker_a(colour_dataset, monkeypatch, tmp_path, settings)
    call_command("verify_storage")  # the running job's checkpoint is named by its row: no orphan
    # What a worker killed between storing a checkpoint and naming it on the row leaves.
    stray = default_storage.save(f"checkpoints/job-{job.pk}/0123456789abcdef.tar", ContentFile(b"stray"))

    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.SUCCEEDED and job.attempts == 2, job.error
    assert "Fetched its checkpoint from storage." in _messages(job)
    assert "Resumed from the checkpoint after epoch 2." in _messages(job)
    assert [h["epoch"] for h in job.history] == [1, 2, 3]
    # Finished: the stored checkpoint and the worker's copy are gone.
    stored = Path(settings.MEDIA_ROOT) / "checkpoints"
    assert job.checkpoint_file == "" and not [p for p in stored.rglob("*") if p.is_file()]
    assert not default_storage.exists(stray)
    assert not any((tmp_path / "worker-b" / "checkpoints").glob("*"))


def test_a_damaged_stored_checkpoint_costs_the_run_its_progress_not_the_job(
    colour_dataset, monkeypatch, tmp_path, settings
):
    job = _killed_on_worker_a(colour_dataset, monkeypatch, tmp_path, settings)
    stored = Path(settings.MEDIA_ROOT) / job.checkpoint_file
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped in storage (a tar ends in zeros: not there)
    stored.write_bytes(bytes(data))

    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.SUCCEEDED, job.error
    assert any("could not be used (its SHA-256 differs" in m for m in _messages(job))
    assert not any(m.startswith("Resumed from the checkpoint") for m in _messages(job))
    assert [h["epoch"] for h in job.history] == [1, 2, 3]


def test_a_worker_that_made_the_checkpoint_keeps_its_own_newer_copy(colour_dataset, monkeypatch, tmp_path, settings):
    job = _killed_on_worker_a(colour_dataset, monkeypatch, tmp_path, settings)
    settings.TRAIN_WORK_DIR = tmp_path / "worker-a"  # the same host took it back
    TrainingJob.objects.filter(pk=job.pk).update(checkpoint_file="checkpoints/gone.tar")  # storage not read
    job.refresh_from_db()
    assert services.checkpoint_restore(job) == ""  # its folder holds what the row's SHA-256 names
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.SUCCEEDED and "Fetched its checkpoint from storage." not in _messages(job)
    assert "Resumed from the checkpoint after epoch 2." in _messages(job)


def test_storage_that_refuses_checkpoints_does_not_fail_the_run(colour_dataset, settings, tmp_path, caplog):
    settings.TRAIN_CHECKPOINT_UPLOAD_SECONDS = 0
    settings.TRAIN_WORK_DIR = tmp_path / "worker"
    Path(settings.MEDIA_ROOT).mkdir(parents=True, exist_ok=True)
    (Path(settings.MEDIA_ROOT) / "checkpoints").write_text("a file where the folder goes: every save fails")
    job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict(CONFIG), enqueue=False)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.SUCCEEDED and job.checkpoint_file == "", job.error
    assert "checkpoint not stored" in caplog.text


def test_a_hand_back_with_storage_out_of_reach_still_hands_the_job_back(
    colour_dataset, settings, tmp_path, monkeypatch
):
    settings.TRAIN_WORK_DIR = tmp_path / "worker"
    Path(settings.MEDIA_ROOT).mkdir(parents=True, exist_ok=True)
    (Path(settings.MEDIA_ROOT) / "checkpoints").write_text("a file where the folder goes: every save fails")
    monkeypatch.setattr(services, "STOP_CHECK_SECONDS", 0)  # the flag is read at the next epoch end
    job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict(CONFIG), enqueue=False)
    monkeypatch.setattr(services, "_send_again", lambda job_id: None)  # no broker in this test
    real = services.JobReporter.epoch_end

    def epoch_end(self, epoch, logs):
        real(self, epoch, logs)
        TrainingJob.objects.filter(pk=self.job_id).update(handback_requested=True)  # its worker got SIGTERM

    monkeypatch.setattr(services.JobReporter, "epoch_end", epoch_end)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.QUEUED and job.epoch == 1, job.error
    assert any(m.startswith("Handed back to the queue") for m in _messages(job))
