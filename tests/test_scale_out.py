"""Several hosts with no disk in common (issue 17): a real S3-compatible server on loopback,
a web process and two worker processes, each with its own folders; the only things they
share are the database, the broker and the object store. A worker is SIGKILLed mid-trial
of a sweep; the trial resumes on the other worker from its checkpoint in storage, and the
sweep's best model is promoted and served by the web process."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from datasets.models import Image
from tests.conftest import _SHARED_WORKER, ROOT, TEST_BROKER_URL, _start, _stop, _wait_for_line, start_reaper
from tests.conftest import subprocess_env as database_env
from tests.images import class_folder_zip, colour_image
from tests.s3server import S3Server, free_port
from trainer.models import ModelVersion, Sweep, TrainingJob

pytestmark = pytest.mark.worker

# Long enough (about a second an epoch here) that the kill lands mid-run, after a stored checkpoint.
BASE = {"arch": "resnet", "size": "small", "image_size": 32, "epochs": 6, "batch_size": 8}


def _host_env(base: dict[str, str], host: Path) -> dict[str, str]:
    """One host: its own media, model cache, training folder and var folder (none shared)."""
    env = dict(base)
    for name, folder in (("MEDIA_ROOT", "media"), ("MODEL_CACHE_DIR", "model-cache"),
                         ("TRAIN_WORK_DIR", "training"), ("VAR_DIR", "var"), ("KERAS_HOME", "keras")):  # fmt: skip
        env[name] = str(host / folder)
    host.mkdir(parents=True)
    return env


class Site:
    """The processes of the multi-host set-up, each in its own folder under `root`."""

    def __init__(self, root: Path, s3: S3Server) -> None:
        self.root, self.s3 = root, s3
        shared = database_env()
        for name in ("MEDIA_ROOT", "MODEL_CACHE_DIR", "TRAIN_WORK_DIR"):
            shared.pop(name)  # this test process's folders: no host sees them
        # Sessions and throttle counts in the database and Redis: nothing kept by one web host.
        shared.update(s3.env, CACHE_URL=TEST_BROKER_URL, TRAIN_HEARTBEAT_INTERVAL="0.5",
                      TRAIN_HEARTBEAT_TIMEOUT="4", TRAIN_CHECKPOINT_UPLOAD_SECONDS="0")  # fmt: skip
        self.shared = shared
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_workers(self, *names: str) -> None:
        """Started together (each spends seconds importing TensorFlow), then waited for."""
        for name in names:
            env = _host_env(self.shared, self.root / name)
            arguments = ["worker", "-Q", "default,gpu", "-c", "1", "-n", f"{name}@%h", "--without-gossip",
                         "--without-mingle", "-l", "INFO"]  # fmt: skip
            proc = _start(arguments, self.root / f"{name}.log", env)
            self.procs.append(proc)
            self.workers[name] = proc
        for name in names:
            _wait_for_line(self.root / f"{name}.log", "ready.", self.workers[name], timeout=90)

    def start_web(self) -> str:
        env = _host_env(self.shared, self.root / "web")
        port = free_port()
        log = (self.root / "web.log").open("wb")
        command = [sys.executable, "-m", "gunicorn", "classifier_site.wsgi", "--bind", f"127.0.0.1:{port}",
                   "--workers", "1", "--threads", "4", "--timeout", "120"]  # fmt: skip
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/healthz", timeout=10)
                return url
            except (requests.ConnectionError, requests.Timeout):
                assert proc.poll() is None, (self.root / "web.log").read_text()[-3000:]
                time.sleep(0.3)
        raise AssertionError("the web process did not start")

    def start_reaper(self) -> None:
        self.procs.append(start_reaper(self.root / "reaper-host", _host_env(self.shared, self.root / "reaper-host")))

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool process: the host is gone, with everything in its folders."""
        worker = self.workers[name]
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        for pid in [worker.pid, *map(int, children)]:
            os.kill(pid, signal.SIGKILL)
        worker.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in self.root.rglob("*.log"))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                _stop(proc)


@pytest.fixture
def site(transactional_db, tmp_path: Path) -> Iterator[Site]:
    _SHARED_WORKER.stop()  # it would take this test's tasks with its own (local) storage
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()
    s3 = S3Server(tmp_path / "s3-data")
    running = Site(tmp_path / "hosts", s3)
    try:
        yield running
    finally:
        running.stop()
        s3.stop()


def _wait(check, what: str, site: Site, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{site.logs()}")


def _running_trial_with_checkpoint(sweep_id: int) -> TrainingJob | None:
    running = TrainingJob.objects.filter(sweep_id=sweep_id, status="running", epoch__gte=2).exclude(checkpoint_file="")
    return running.exclude(epoch__gte=BASE["epochs"] - 1).first()


def test_a_sweep_over_two_hosts_survives_a_killed_worker_and_its_best_is_served(site: Site, tmp_path: Path):
    admin = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    auth = {"Authorization": f"Token {Token.objects.create(user=admin).key}"}
    site.start_workers("host-a", "host-b")
    site.start_reaper()
    web = site.start_web()

    # Import through the web host: the upload goes to the object store, a worker imports it.
    dataset = requests.post(f"{web}/api/v1/datasets/", json={"name": "colours"}, headers=auth, timeout=30)
    assert dataset.status_code == 201, dataset.text
    dataset_id = dataset.json()["id"]
    archive = class_folder_zip(tmp_path / "colours.zip", per_class=16)
    with archive.open("rb") as upload:
        started = requests.post(f"{web}/api/v1/imports/", data={"dataset": dataset_id},
                                files={"archive": upload}, headers=auth, timeout=60)  # fmt: skip
    assert started.status_code == 201, started.text
    imported = _wait(lambda: (r := requests.get(f"{web}/api/v1/imports/{started.json()['id']}/", headers=auth,
                                                timeout=30).json())["status"] in ("succeeded", "failed") and r,
                     "the import", site, timeout=120)  # fmt: skip
    assert imported["status"] == "succeeded", imported

    # A 4-trial grid over the two workers (issue 17 asks for four); the best is promoted when the sweep ends.
    sweep = requests.post(f"{web}/api/v1/sweeps/", json={
        "dataset": dataset_id, "base_config": BASE, "space": {"learning_rate": [0.4, 0.1], "flip": [False, True]},
        "method": "grid", "budget": 4, "promote_best": True,
    }, headers=auth, timeout=30)  # fmt: skip
    assert sweep.status_code == 201, sweep.text
    sweep_id = sweep.json()["id"]

    victim = _wait(lambda: _running_trial_with_checkpoint(sweep_id), "a trial with a stored checkpoint", site, 240)
    killed_host, killed_at = victim.worker.split("@")[0], victim.epoch
    site.kill(killed_host)
    survivor = "host-b" if killed_host == "host-a" else "host-a"

    finished = _wait(lambda: (s := Sweep.objects.get(pk=sweep_id)).is_finished and s, "the sweep", site, 600)
    assert finished.status == "succeeded", finished.outcome
    trials = list(TrainingJob.objects.filter(sweep_id=sweep_id))
    assert len(trials) == 4 and all(t.is_finished for t in trials), [(t.pk, t.status, t.error) for t in trials]
    assert not [t for t in trials if t.status == "failed"], [(t.pk, t.error) for t in trials]

    victim.refresh_from_db()
    messages = [e["message"] for e in victim.events]
    assert victim.attempts == 2 and victim.worker.startswith(f"{survivor}@"), (victim.worker, messages)
    assert "Fetched its checkpoint from storage." in messages, messages
    resumed = [m for m in messages if m.startswith("Resumed from the checkpoint after epoch")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1].rstrip(".")) >= killed_at - 1, messages
    # Its epochs are counted once: the resumed run went on from the checkpoint, not from zero.
    assert [h["epoch"] for h in victim.history] == list(range(1, len(victim.history) + 1))

    # The best trial's model is live, and the web host answers with it from the object store.
    best = TrainingJob.objects.get(pk=finished.best_job_id)
    live = ModelVersion.objects.get(dataset_id=dataset_id, is_promoted=True)
    assert live.pk == best.model_version.pk, finished.outcome
    answer = requests.post(f"{web}/api/v1/datasets/{dataset_id}/predict/", headers=auth, timeout=120,
                           files={"image": ("r.png", colour_image("red", seed=999))})  # fmt: skip
    assert answer.status_code == 200, answer.text + site.logs()
    assert answer.json()["model_version"]["id"] == live.pk
    assert answer.json()["predictions"][0]["label"] == "red", (finished.best_score, answer.json())

    # Nothing lives on a host's disk that another needs: media only in the object store.
    keys = set(site.s3.keys())
    assert {i.file.name for i in Image.objects.filter(dataset_id=dataset_id)} <= keys and live.file.name in keys
    assert not [k for k in keys if k.startswith("checkpoints/")], "finished jobs leave no checkpoint behind"
    for host in ("host-a", "host-b", "web"):
        media = site.root / host / "media"
        assert not media.exists() or not [p for p in media.rglob("*") if p.is_file()], host
    assert any((site.root / "web" / "model-cache").rglob("*")), "the web host fetched the model itself"
