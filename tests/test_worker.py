"""The whole loop through a real Celery worker process and Redis on loopback."""

import json
import subprocess
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.conftest import ROOT, subprocess_env
from tests.images import class_folder_zip, colour_image
from trainer.models import TrainingJob

pytestmark = pytest.mark.worker


def test_import_train_predict_end_to_end(celery_worker_process, tmp_path, member):
    archive = class_folder_zip(tmp_path / "colours.zip", per_class=30)
    call_command("import_dataset", str(archive), "--name", "colours")

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
