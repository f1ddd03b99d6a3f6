"""The whole loop through a real Celery worker process and Redis on loopback."""

import json
import subprocess
import sys
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from datasets.models import DatasetImport
from tests.conftest import ROOT, subprocess_env
from tests.images import class_folder_zip, colour_image
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
    admin.force_authenticate(admin_user)
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
