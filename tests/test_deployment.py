"""docker-compose.yml and .env.example: no Docker engine here, so they are read and checked."""

import json
import os
import re
import secrets
import subprocess
import sys

import yaml

from tests.conftest import ROOT


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


APP_SERVICES = ("web", "worker-gpu0", "worker-default", "reaper")


def test_compose_has_its_services_with_health_checks():
    services = _compose()["services"]
    assert set(services) == {*APP_SERVICES, "objectstore", "objectstore-bucket", "redis", "postgres"}
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"objectstore-bucket"}  # creates the bucket and exits
    assert all("healthcheck" in s for name, s in services.items() if name not in one_shot)


def test_no_disk_is_shared_between_services_files_go_to_the_object_store():
    """Issue 17: every file more than one process needs lives in storage; a worker's volume is its own cache."""
    services = _compose()["services"]
    mounts = [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]
    assert len(mounts) == len(set(mounts)), mounts
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["AWS_STORAGE_BUCKET_NAME"] and env["AWS_S3_ENDPOINT_URL"] == "http://objectstore:9000"
        assert "MEDIA_ROOT" not in env
    assert "objectstore-bucket" in services["web"]["depends_on"]


def _procfile() -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line)


def _queues(command: str) -> set[str]:
    return set(re.search(r"--queues (\S+)", command).group(1).split(","))  # type: ignore[union-attr]


def test_short_work_never_shares_a_worker_with_training_in_compose_or_the_procfile():
    """Issue 16, item 4: an upload waited behind a 10-minute training run, one worker serving both queues."""
    from classifier_site.celery import app

    compose = {name: service.get("command", "") for name, service in _compose()["services"].items()}
    for commands in (compose, _procfile()):
        workers = [c for c in commands.values() if "celery" in c and " worker" in c]
        assert {frozenset(_queues(c)) for c in workers} == {frozenset({"gpu"}), frozenset({"default"})}, workers
    # Only training goes to `gpu`; everything else (imports, scoring, exports) to `default`.
    app.loader.import_default_modules()  # every app's tasks module, as a worker imports them
    tasks = [name for name in app.tasks if not name.startswith("celery.")]
    routes = {name: app.amqp.router.route({}, name)["queue"].name for name in tasks}
    assert {name for name, queue in routes.items() if queue == "gpu"} == {"trainer.tasks.train_job"}, routes
    assert set(routes.values()) == {"gpu", "default"}


def test_the_reaper_is_its_own_process_needing_no_broker_in_compose_and_the_procfile():
    assert _procfile()["reaper"] == "python manage.py reaper"
    reaper = _compose()["services"]["reaper"]
    assert reaper["command"] == "python manage.py reaper" and "redis" not in reaper["depends_on"]


def test_worker_reserves_a_gpu_and_consumes_the_gpu_queue():
    worker = _compose()["services"]["worker-gpu0"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"  # one worker per GPU, seeing only its own
    assert "--queues gpu " in worker["command"] and "--concurrency 1" in worker["command"]
    assert "deploy" not in _compose()["services"]["worker-default"]  # short work needs no GPU


def test_web_and_workers_wait_for_their_dependencies():
    services = _compose()["services"]
    for name in ("web", "worker-gpu0", "worker-default"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
        assert depends["objectstore-bucket"]["condition"] == "service_completed_successfully"
        assert services[name]["env_file"] == ".env"
        assert services[name]["environment"]["CELERY_BROKER_URL"].startswith("redis://redis:")
    assert "training-gpu0:/var/lib/classifier_site/training" in services["worker-gpu0"]["volumes"]


def test_env_example_lists_every_variable_settings_read():
    settings = (ROOT / "classifier_site" / "settings.py").read_text()
    read = set(re.findall(r'\benv(?:\.\w+|_bool|_secret|_choice)\("([A-Z_]+)"', settings))
    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read, "settings.py reads no variables?"
    assert read - listed == set()


def test_collectstatic_works_with_production_settings(tmp_path):
    """DEBUG off serves hashed names from whitenoise's manifest: collectstatic must build it
    (a vendored file naming a missing source map used to break it, and every page with it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_ALLOW")}
    env.update(
        DEBUG="false", SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="example.org", STATIC_ROOT=str(tmp_path)
    )
    done = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    assert {"css/site.css", "js/predict.js", "vendor/chart-4.6.1.umd.min.js"} <= manifest.keys()
