"""The whole loop through a real Celery worker process and Redis on loopback."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from datasets.models import DatasetImport
from datasets.services import import_create
from tests.conftest import ROOT, TEST_BROKER_URL, subprocess_env
from tests.images import class_folder_zip, colour_image
from trainer.jobs.services import training_job_cancel, training_job_start
from trainer.ml.config import TrainConfig
from trainer.models import TrainingJob

pytestmark = pytest.mark.worker


def _wait_for(record, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not record.is_finished and time.monotonic() < deadline:
        time.sleep(0.5)
        record.refresh_from_db()
    return record


def test_upload_train_predict_end_to_end(celery_worker_process, tmp_path, admin_user, member):
    # Upload through the API; the worker imports it from the `default` queue.
    admin = APIClient()
    # A real token, not force_authenticate: an upload's body is judged on its headers before DRF runs.
    admin.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin_user).key}")
    dataset = admin.post("/api/v1/datasets/", {"name": "colours"}, format="json").json()
    archive = class_folder_zip(tmp_path / "colours.zip", per_class=30)
    upload = SimpleUploadedFile("colours.zip", archive.read_bytes())
    created = admin.post("/api/v1/imports/", {"dataset": dataset["id"], "archive": upload}).json()
    record = _wait_for(DatasetImport.objects.get(pk=created["id"]))
    assert record.status == "succeeded", record.error
    assert record.report["imported"] == 90

    # `train --wait` publishes to Redis; the worker process claims and trains the job.
    command = [sys.executable, "manage.py", "train", "colours", "--epochs", "3", "--wait", "--timeout", "240", "--json"]
    run = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:] + celery_worker_process.log_path.read_text()[-3000:]
    summary = json.loads(run.stdout)
    assert summary["status"] == "succeeded" and summary["accuracy"] >= 0.8

    job = TrainingJob.objects.get(pk=summary["job"])
    assert job.device == "CPU" and len(job.history) == 3 and job.heartbeat_at
    assert "training device: CPU" in celery_worker_process.log_path.read_text()

    api = APIClient()
    api.force_authenticate(member)
    response = api.post("/api/v1/predict/", {"image": SimpleUploadedFile("r.png", colour_image("red", seed=4242))})
    assert response.status_code == 200
    assert response.json()["model_version"]["id"] == summary["model_version"]
    assert response.json()["predictions"][0]["label"] == "red"


def _pool_children(worker: subprocess.Popen) -> list[int]:
    """The prefork pool processes of a worker: where tasks run."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_worker_killed_mid_run_resumes_the_job_from_its_checkpoint(celery_worker_with_reaper, colour_dataset):
    worker = celery_worker_with_reaper
    # Enough epochs at 48 px (about a second each here) that the kill lands mid-run, after a checkpoint.
    config = TrainConfig.from_dict({"arch": "resnet", "size": "small", "image_size": 48, "epochs": 8, "batch_size": 8})
    job = training_job_start(dataset=colour_dataset, config=config)  # published once committed (no transaction here)
    deadline = time.monotonic() + 120
    while job.epoch < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        job.refresh_from_db()
    assert job.status == "running" and job.epoch >= 2, worker.log_path.read_text()[-3000:]
    for pid in _pool_children(worker):
        os.kill(pid, signal.SIGKILL)  # the training process dies with no chance to clean up
    killed_at = job.epoch

    job = _wait_for(job, timeout=240)
    log = worker.log_path.read_text()
    assert job.status == "succeeded", job.error + log[-3000:]
    assert job.attempts == 2 and len(job.history) == 8
    assert [h["epoch"] for h in job.history] == list(range(1, 9))
    messages = [e["message"] for e in job.events]
    assert any(m.startswith("Re-queued: the worker on") for m in messages), messages
    resumed = [m for m in messages if m.startswith("Resumed from the checkpoint after epoch")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1].rstrip(".")) >= killed_at - 1, messages
    assert TrainingJob.objects.get(pk=job.pk).model_version.metrics["accuracy"] >= 0.8


def _procfile_worker(name: str) -> list[str]:
    """The Procfile's `name` line as arguments after `celery -A classifier_site`."""
    line = dict(entry.split(": ", 1) for entry in (ROOT / "Procfile").read_text().splitlines() if entry)[name]
    line = re.sub(r"\$\{\w+:-(\w+)\}", r"\1", line)  # ${VAR:-default} as the shell would expand it
    arguments = shlex.split(line)
    assert arguments[:3] == ["celery", "-A", "classifier_site"], line
    return [*arguments[3:], "--without-gossip", "--without-mingle"]


@pytest.fixture
def procfile_workers(transactional_db, tmp_path):
    """The Procfile's two workers (training on `gpu`, short work on `default`), started as it starts them."""
    from tests.conftest import _SHARED_WORKER, _start, _stop, _wait_for_line, fast_reaper_env

    _SHARED_WORKER.stop()
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()
    env = fast_reaper_env(tmp_path)
    started = []

    def start(name: str, log_name: str):
        proc = _start(_procfile_worker(name), tmp_path / log_name, env)
        started.append(proc)
        _wait_for_line(tmp_path / log_name, "ready.", proc, timeout=90)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            _stop(proc)


def test_imports_run_beside_training_and_sigterm_hands_the_job_back(procfile_workers, colour_dataset, tmp_path):
    """Issue 16, items 4 and 5: one worker served both queues, so an upload waited for a
    training run; and SIGTERM on a deploy waited for the whole run."""
    from trainer.jobs.services import checkpoint_dir

    gpu = procfile_workers("worker", "gpu.log")
    procfile_workers("worker_default", "default.log")
    config = TrainConfig.from_dict({"arch": "resnet", "size": "small", "image_size": 48, "epochs": 30, "batch_size": 8})
    job = training_job_start(dataset=colour_dataset, config=config)
    deadline = time.monotonic() + 150
    while job.epoch < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        job.refresh_from_db()
    assert job.status == "running" and job.epoch >= 1, gpu.log_path.read_text()[-3000:]

    upload = SimpleUploadedFile("more.zip", class_folder_zip(tmp_path / "more.zip", per_class=3).read_bytes())
    record = import_create(dataset=colour_dataset, upload=upload)
    record = _wait_for(record, timeout=60)
    job.refresh_from_db()
    assert record.status == "succeeded" and job.status == "running"  # the import did not wait for training

    gpu.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    gpu.wait(timeout=60)
    took = time.monotonic() - asked
    job.refresh_from_db()
    messages = [e["message"] for e in job.events]
    assert job.status == "queued" and any(m.startswith("Handed back to the queue") for m in messages), messages
    assert took < 30, f"the worker took {took:.0f} s to shut down"
    assert checkpoint_dir(job.pk).exists() and job.epoch < 30
    handed_at = job.epoch

    procfile_workers("worker", "gpu-again.log")  # the deploy's new worker takes the job back
    deadline = time.monotonic() + 150
    while job.epoch <= handed_at and not job.is_finished and time.monotonic() < deadline:
        time.sleep(0.2)
        job.refresh_from_db()
    assert job.status == "running" and job.attempts == 2 and job.epoch > handed_at, job.error
    resumed = [e["message"] for e in job.events if e["message"].startswith("Resumed from the checkpoint after epoch")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1].rstrip(".")) >= handed_at - 1
    # Resumed and training on: that is what a hand-back must give. Running it to the end would
    # only repeat the killed-worker test's resumed run; a cancel ends it now.
    training_job_cancel(job=job)
    assert _wait_for(job, timeout=60).status == "cancelled"
