"""Training jobs through the services, as the worker runs them (in this process)."""

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import IntegrityError
from django.utils import timezone

from classifier_site.runs import RunStatus
from datasets.services import dataset_create, images_add
from tests.conftest import ROOT, subprocess_env, train_now
from tests.images import colour_image, colour_items
from trainer.jobs.services import (
    Heartbeat,
    JobReporter,
    TrainingRefused,
    _claim,
    training_job_cancel,
    training_job_repeat,
    training_job_run,
    training_job_start,
    training_jobs_reap,
)
from trainer.ml.config import TrainConfig
from trainer.ml.files import sha256_file
from trainer.models import ModelVersion, TrainingJob
from trainer.registry.selectors import model_version_serving
from trainer.registry.services import model_version_promote


@pytest.mark.django_db
def test_job_trains_and_records_a_verifiable_model(colour_dataset, settings):
    version = train_now(colour_dataset)
    job = version.job
    assert job.status == RunStatus.SUCCEEDED and job.progress == 1.0
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
    assert training_job_cancel(job=job).status == RunStatus.CANCELLED
    training_job_run(job_id=job.pk)  # a late delivery cannot revive it
    job.refresh_from_db()
    assert job.status == RunStatus.CANCELLED and not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_cancel_requested_while_running_stops_at_the_next_progress_write(colour_dataset, monkeypatch):
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(epochs=20), enqueue=False)
    monkeypatch.setattr("trainer.jobs.services.JobReporter.should_stop", lambda self: True)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.CANCELLED and job.epoch == 0 and job.phase == "decoding"
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_a_crash_in_training_fails_the_job_with_the_reason(colour_dataset, monkeypatch):
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(), enqueue=False)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 4 GB")

    monkeypatch.setattr("trainer.jobs.snapshots.load_array", out_of_memory)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.FAILED and job.error == "MemoryError: cannot allocate 4 GB"


@pytest.mark.django_db
def test_missing_image_files_are_skipped_and_reported(colour_dataset):
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(), enqueue=False)
    for image in colour_dataset.images.all():
        default_storage.delete(image.file.name)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.FAILED and "training split is empty" in job.error


@pytest.mark.django_db
def test_the_first_version_serves_until_another_is_promoted(colour_dataset):
    first = train_now(colour_dataset, epochs=1)
    second = train_now(colour_dataset, epochs=1)
    assert model_version_serving() == first
    model_version_promote(version=second, force=True)
    assert model_version_serving() == second
    model_version_promote(version=first, force=True)
    assert model_version_serving() == first
    model_version_promote(version=second, force=True)
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
    with pytest.raises(CommandError, match="'maybe' is not true or false"):
        call_command("train", "colours", "--set", "flip=maybe")
    with pytest.raises(CommandError, match="unknown config fields: colour"):
        call_command("train", "colours", "--set", "colour=red")


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
    assert job.status == RunStatus.FAILED and "broker" in job.error
    assert default_storage.exists("models") is False


def _running_job(dataset, *, attempts=1, seconds_silent=600, **fields):
    """A job a worker claimed and then went silent on `seconds_silent` ago."""
    job = training_job_start(dataset=dataset, config=TrainConfig.from_dict({"arch": "baseline"}), enqueue=False)
    beat = timezone.now() - timedelta(seconds=seconds_silent)
    TrainingJob.objects.filter(pk=job.pk).update(
        status=RunStatus.RUNNING, attempts=attempts, heartbeat_at=beat, host="gpu-7", **fields
    )
    return job


@pytest.mark.django_db
def test_reaper_requeues_a_job_whose_worker_died_and_publishes_it(
    colour_dataset, monkeypatch, django_capture_on_commit_callbacks
):
    published = []
    monkeypatch.setattr("classifier_site.runs.publish", lambda task, *args: published.append(args) and None)
    dead = _running_job(colour_dataset)
    alive = _running_job(colour_dataset, seconds_silent=5)
    with django_capture_on_commit_callbacks(execute=True):
        reaped = training_jobs_reap()
    assert reaped.requeued == [dead.pk] and not reaped.failed
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == RunStatus.QUEUED and alive.status == RunStatus.RUNNING
    assert published == [(dead.pk,)]
    assert "Re-queued: the worker on gpu-7 stopped responding" in dead.events[-1]["message"]
    # The next worker claims it as attempt 2; writes from attempt 1 no longer land.
    assert _claim(dead.pk) == 2
    stale_reporter = JobReporter(dead.pk, attempt=1, epochs=10)
    stale_reporter.epoch_end(0, {"loss": 1.0})
    dead.refresh_from_db()
    assert dead.epoch == 0 and stale_reporter.lost and stale_reporter.should_stop()


@pytest.mark.django_db
def test_reaper_sends_again_a_queued_job_whose_message_was_lost(
    colour_dataset, monkeypatch, settings, django_capture_on_commit_callbacks
):
    published = []
    monkeypatch.setattr("classifier_site.runs.publish", lambda task, *args: published.append(args) and None)
    with django_capture_on_commit_callbacks(execute=True):
        lost = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "baseline"}))
        waiting = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "baseline"}))
    assert published == [(lost.pk,), (waiting.pk,)]  # sent when they were made, and stamped
    assert TrainingJob.objects.filter(published_at__isnull=True).count() == 0
    long_ago = timezone.now() - timedelta(seconds=settings.TRAIN_REPUBLISH_SECONDS + 60)
    TrainingJob.objects.filter(pk=lost.pk).update(published_at=long_ago)
    with django_capture_on_commit_callbacks(execute=True):
        reaped = training_jobs_reap()
    assert reaped.republished == [lost.pk] and published[-1] == (lost.pk,) and len(published) == 3
    lost.refresh_from_db()
    assert lost.status == RunStatus.QUEUED and timezone.now() - lost.published_at < timedelta(seconds=30)
    assert "Sent to the queue again: no worker took it in 16 minutes" in lost.events[-1]["message"]
    with django_capture_on_commit_callbacks(execute=True):
        assert training_jobs_reap().republished == []  # just sent: not again at the next tick
    assert len(published) == 3


@pytest.mark.django_db
def test_reaper_with_the_broker_down_tries_one_send_a_pass_says_so_once_and_sends_each_job_once_it_is_back(
    colour_dataset, monkeypatch, django_capture_on_commit_callbacks
):
    """With a long queue and a broker down, one timeout per job made a pass last minutes
    (and /readyz call the reaper stale); an outage logged an event per pass; and a dead job
    whose first message was long ago went out twice in the pass that re-queued it."""
    attempts, broker_up = [], False
    monkeypatch.setattr(
        "classifier_site.runs.publish",
        lambda task, *args: attempts.append(args[0]) or (None if broker_up else "Could not reach the task broker."),
    )
    an_hour_ago = timezone.now() - timedelta(hours=1)
    dead = [_running_job(colour_dataset, published_at=an_hour_ago, created_at=an_hour_ago) for _ in range(2)]
    config = TrainConfig.from_dict({"arch": "baseline"})
    unsent = [training_job_start(dataset=colour_dataset, config=config, enqueue=False) for _ in range(3)]
    TrainingJob.objects.filter(pk__in=[j.pk for j in unsent]).update(created_at=an_hour_ago)  # never sent
    for _ in range(2):  # two passes during the outage
        with django_capture_on_commit_callbacks(execute=True):
            training_jobs_reap()
    assert len(attempts) == 2  # one try a pass, not one a job
    jobs = TrainingJob.objects.filter(pk__in=[j.pk for j in dead + unsent])
    assert {j.status for j in jobs} == {RunStatus.QUEUED} and all(j.published_at is None for j in jobs)
    said = {j.pk: sum("Could not reach the task broker" in e["message"] for e in j.events) for j in jobs}
    assert said == {**{j.pk: 1 for j in dead}, **{j.pk: 0 for j in unsent}}  # once, not once a pass

    broker_up, attempts[:] = True, []
    with django_capture_on_commit_callbacks(execute=True):
        training_jobs_reap()
    assert sorted(attempts) == sorted(j.pk for j in dead + unsent)  # each exactly once
    assert all(j.published_at for j in jobs.all())


@pytest.mark.django_db
def test_reaper_fails_a_job_after_the_last_attempt_and_cancels_a_cancelled_one(colour_dataset, settings):
    settings.TRAIN_MAX_ATTEMPTS = 3
    exhausted = _running_job(colour_dataset, attempts=3)
    cancelled = _running_job(colour_dataset, cancel_requested=True)
    reaped = training_jobs_reap()
    assert (reaped.failed, reaped.cancelled, reaped.requeued) == ([exhausted.pk], [cancelled.pk], [])
    exhausted.refresh_from_db()
    assert exhausted.status == RunStatus.FAILED and exhausted.finished_at
    assert "stopped responding" in exhausted.error and "attempt 3 of 3; not retrying" in exhausted.error
    cancelled.refresh_from_db()
    assert cancelled.status == RunStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_heartbeat_thread_stamps_the_job_while_the_run_lasts(colour_dataset, settings):
    settings.TRAIN_HEARTBEAT_INTERVAL = 0.05
    job = _running_job(colour_dataset)
    with Heartbeat(job.pk, attempt=1):
        time.sleep(0.5)
    job.refresh_from_db()
    assert timezone.now() - job.heartbeat_at < timedelta(seconds=2)
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    time.sleep(0.2)  # stopped with the run: nothing stamps it any more
    job.refresh_from_db()
    assert timezone.now() - job.heartbeat_at > timedelta(minutes=50)


@pytest.mark.django_db
def test_a_job_records_its_environment_and_resolved_config_and_runs_again_exactly(colour_dataset):
    version = train_now(colour_dataset, class_weighting="auto", epochs=2)
    job = version.job
    assert job.environment["tensorflow"] and job.environment["keras"] and job.environment["python"]
    assert job.config["class_weighting"] == "off" and job.config["mixed_precision"] == "off"  # no "auto" left
    assert job.attempts == 1 and job.snapshot_hash == job.snapshot["hash"]
    extra = [(f"extra-{i}.png", colour_image("red", seed=1000 + i), "red") for i in range(5)]
    images_add(dataset=colour_dataset, items=extra)  # the dataset moves on

    again = training_job_repeat(job=job)
    assert again.pk != job.pk and again.status == RunStatus.QUEUED
    assert again.config == job.config and again.snapshot == job.snapshot  # same settings, same images
    training_job_run(job_id=again.pk)
    again.refresh_from_db()
    assert again.status == RunStatus.SUCCEEDED, again.error
    assert again.model_version.metrics["count"] == version.metrics["count"]


@pytest.mark.django_db
def test_missing_backbone_weights_fail_the_job_at_once_with_the_fix(colour_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "mobilenet"}), enqueue=False)
    monkeypatch.setattr("trainer.jobs.services._load_data", lambda *a: pytest.fail("loaded the data first"))
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == RunStatus.FAILED
    assert job.error.startswith("ImageNet weights for mobilenet are not installed") and "fetch_weights" in job.error


@pytest.mark.django_db
def test_decoded_images_are_cached_per_snapshot_and_size(colour_dataset, monkeypatch):
    first = train_now(colour_dataset, epochs=1)
    monkeypatch.setattr("trainer.jobs.snapshots.load_array", lambda *a: pytest.fail("decoded again"))
    second = train_now(colour_dataset, epochs=1, seed=1)  # same snapshot and size: read from the cache
    assert second.job.snapshot_hash == first.job.snapshot_hash


# --- one click, one job ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_double_submitted_train_form_starts_one_job(colour_dataset, admin_user, monkeypatch):
    import re
    import threading

    from django.db import connection
    from django.test import Client

    # Committed jobs would reach a real worker (a shared one may be running): count the messages instead.
    published: list[tuple[object, ...]] = []
    monkeypatch.setattr("classifier_site.runs.publish", lambda task, *args: published.append(args) and None)

    client = Client()
    client.force_login(admin_user)
    form = client.get(f"/jobs/new/?dataset={colour_dataset.pk}").content.decode()
    key = re.search(r'name="request_key" value="([0-9a-f]{32})"', form).group(1)
    assert key not in client.get("/jobs/new/").content.decode()  # a fresh key each time the form is shown
    posted = {"dataset": colour_dataset.pk, "arch": "baseline", "epochs": 1, "request_key": key}
    answers: list[int] = []

    def submit() -> None:
        twin = Client()
        twin.force_login(admin_user)
        try:
            answers.append(twin.post("/jobs/new/", posted).status_code)
        finally:
            connection.close()

    clicks = [threading.Thread(target=submit) for _ in range(4)]
    for click in clicks:
        click.start()
    for click in clicks:
        click.join(60)
    assert answers == [302] * 4
    assert TrainingJob.objects.filter(dataset=colour_dataset).count() == 1
    assert len(published) == 1  # one job, one message
    again = client.post("/jobs/new/", posted, follow=True).content.decode()
    assert "already started by the same click" in again
    posted["request_key"] = ""  # no key (a script posting the form): every post is a job
    client.post("/jobs/new/", posted)
    assert TrainingJob.objects.filter(dataset=colour_dataset).count() == 2


@pytest.mark.django_db
def test_the_api_replays_a_job_for_the_same_idempotency_key(colour_dataset, admin_user):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(admin_user)
    body = {"dataset": colour_dataset.pk, "config": {"arch": "baseline", "epochs": 1}}
    first = api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    replay = api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    other = api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="abc-2")
    assert (first.status_code, replay.status_code, other.status_code) == (201, 200, 201)
    assert replay.json()["id"] == first.json()["id"] != other.json()["id"]
    assert api.post("/api/v1/jobs/", body, format="json").status_code == 201  # no key: a new job
    assert TrainingJob.objects.count() == 3
