"""Shared fixtures: an owner/member/outsider set of clients, generated datasets,
a model trained for real on them, and a real Celery worker process."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from django.conf import settings
from django.db import connection, connections
from django.test import Client

from classifier_site.celery import app as celery_app
from datasets.models import Dataset, Image, Split
from datasets.services import dataset_create, images_add
from tests import train_once
from tests.images import colour_items
from trainer.jobs.services import training_job_run, training_job_start
from trainer.ml.config import TrainConfig
from trainer.ml.metrics import report
from trainer.models import Evaluation, ModelVersion
from trainer.reports.services import Predictions, evaluation_record

ROOT = Path(__file__).resolve().parent.parent
# pytest-xdist runs tests in several processes (gw0, gw1, ...): each gets its own
# broker database, Celery worker, cache folder, media and (pytest-django's suffix) test
# database, and live servers take free ports, so the tests that start real processes
# (workers, the reaper, browsers) run in every xdist process at once, never in each
# other's way.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_XDIST_INDEX = int(XDIST_WORKER[2:] or 0) if XDIST_WORKER.startswith("gw") else 0
# Tests publish to, and workers consume from, a Redis database of their own.
TEST_BROKER_URL = os.environ.get("TEST_BROKER_URL", f"redis://127.0.0.1:6379/{15 - _XDIST_INDEX % 8}")


def pytest_configure(config: pytest.Config) -> None:
    from classifier_site.folders import ensure_folders

    ensure_folders()  # the test database's default place is VAR_DIR; importing settings creates nothing
    # A cache of this test process's own (throttle counts and import progress are keyed by
    # row ids, which every xdist worker's database reuses); child processes inherit it.
    folder = Path(settings.VAR_DIR) / f"test-cache-{XDIST_WORKER or 'main'}"
    shutil.rmtree(folder, ignore_errors=True)  # nothing counted by an earlier run (ids repeat)
    os.environ["CACHE_URL"] = f"filecache://{folder}"
    # The throttles' counts too (user ids repeat across xdist databases), in a folder of their own
    # that each test starts empty (`_fresh_throttles`).
    os.environ["THROTTLE_CACHE_URL"] = f"filecache://{folder / 'throttle'}"
    for alias, location in (("default", folder), ("throttle", folder / "throttle")):
        settings.CACHES[alias].update(
            BACKEND="django.core.cache.backends.filebased.FileBasedCache", LOCATION=str(location)
        )
    # Test users' passwords need no strength: PBKDF2 costs 0.25 s a user, MD5 nothing (PBKDF2 still
    # verifies what child processes, which keep the real settings, hash).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *settings.PASSWORD_HASHERS]


# What the PostgreSQL pass runs (`-m "database or smoke"`): behaviour that rests on the
# database engine (row locks, races, constraints, compare-and-set updates, the raw
# INSERT, migrations, query counts), plus a smoke of every app. The SQLite pass runs all.
DATABASE_DEPENDENT = {
    "tests/test_import.py": "the importer's raw multi-row INSERT, its unique constraint and rollback",
    "tests/test_import_faults.py": "staged rows, their publishing INSERT ... SELECT and the reaper's clean-up",
    "tests/test_labelling.py": "row locks, optimistic locking, concurrent changes and deadlocks",
    "tests/test_migrations.py": "migrations, forwards from the previous release",
    "tests/test_request_faults.py::test_with_the_database_down": "the engine's own errors when it is out of reach",
    # The broker outage on Redis only: which broker is down is not the database's business.
    "tests/test_job_faults.py::test_the_reaper_keeps_reaping_through_a_broker_outage_and_sends_once_it_is_back[r": (
        "the reaper's conditional updates, from its own process"
    ),
    "tests/test_job_faults.py::test_the_reaper_fails_": "the reaper's conditional updates",
    "tests/test_job_faults.py::test_a_worker_shutting_down": "hand-back flags",
    "tests/test_settings.py::test_migrations_are_complete": "migrations",
    "tests/test_serving.py::test_concurrent_promotions_leave_exactly_one_promoted": "a partial unique index, raced",
    "tests/test_serving.py::test_rollback_walks_back_through_the_promotions": "promotion history",
    "tests/test_serving.py::test_the_gate_refuses_a_worse_version_unless_forced": "promotion",
    "tests/test_serving_datasets.py::test_concurrent_promotions_in_two_datasets": "a partial unique index per dataset",
    "tests/test_serving_datasets.py::test_each_dataset_has_its_own_live_version": "promotion per dataset",
    "tests/test_training.py::test_a_double_submitted_train_form": "a partial unique index, raced",
    "tests/test_training.py::test_duplicate_delivery_does_nothing": "compare-and-set claim",
    "tests/test_training.py::test_cancel_": "compare-and-set status changes",
    "tests/test_training.py::test_reaper_": "the reaper's conditional updates",
    "tests/test_training.py::test_heartbeat_thread": "a second connection from a thread",
    "tests/test_sweeps.py::test_the_reaper_ends_a_sweep": "the sweep's compare-and-set ending",
    "tests/test_export.py::test_requests_are_idempotent_and_a_duplicate_delivery_converts_nothing": "get_or_create",
    "tests/test_export.py::test_an_export_whose_worker_died_can_be_asked_for_again": "conditional requeue",
    "tests/test_scoring.py::test_one_active_run_per_dataset": "a partial unique index",
    "tests/test_scoring.py::test_the_task_fails_a_run_whose_model_file_is_missing_and_ignores_duplicates": "claims",
    "tests/test_scoring.py::test_a_run_writes_what_the_model_answers": "bulk updates",
    "tests/test_workbench.py::test_query_count_does_not_grow_with_the_page": "query counts",
    "tests/test_datasets_web.py::test_retry_refuses_running_and_finished_imports_but_takes_stale_ones": "requeue",
    "tests/test_worker.py::test_upload_train_predict_end_to_end": "a real worker process on the same database",
    "tests/test_dataset_export.py::test_an_export_imports_into_a_fresh_site": "the importer's raw INSERT, round trip",
    "tests/test_dataset_export.py::test_an_export_whose_worker_died": "conditional updates, a partial unique index",
    "tests/test_verify_storage.py::test_a_restored_backup": "the engine's own dump and restore (pg_dump, SQLite)",
}
SMOKE = ("tests/test_pages.py", "tests/test_permissions.py", "tests/test_api.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.nodeid.startswith(prefix) for prefix in DATABASE_DEPENDENT):
            item.add_marker(pytest.mark.database)
        if item.nodeid.startswith(SMOKE):
            item.add_marker(pytest.mark.smoke)


@pytest.fixture(scope="session", autouse=True)
def _test_broker() -> None:
    celery_app.conf.broker_url = TEST_BROKER_URL


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    """No test inherits another's requests: the same user ids come back in every test."""
    from django.core.cache import caches

    from classifier_site.throttling import forget_leases

    caches["throttle"].clear()
    forget_leases()


@pytest.fixture(autouse=True)
def _isolated_files(settings: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No backbone installed unless a test installs one: `auto` then trains from scratch, as in CI.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    settings.MEDIA_ROOT = tmp_path / "media"  # type: ignore[attr-defined]
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"  # type: ignore[attr-defined]
    settings.TRAIN_WORK_DIR = tmp_path / "training"  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _fresh_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts like a new web process, with no model loaded."""
    from classification import predictor
    from classifier_site.authentication import CachedTokenAuthentication

    monkeypatch.setattr(predictor, "_predictor", predictor.Predictor())
    monkeypatch.setattr(predictor.Predictor, "watch", False)  # no thread outliving its test
    CachedTokenAuthentication.forget()


ROLES = ("admin", "staff", "user", "anonymous")


@pytest.fixture
def roles(db: None) -> dict[str, Client]:
    """A client per kind of caller: an admin (superuser), a second staff user, an
    ordinary user and an anonymous client (tests/test_permissions.py's columns)."""
    from tests.factories import UserFactory

    clients = {"anonymous": Client()}
    for role, person in (("admin", UserFactory(admin=True, username="admin")),
                         ("staff", UserFactory(staff=True, username="staff")),
                         ("user", UserFactory(username="user"))):  # fmt: skip
        clients[role] = Client()
        clients[role].force_login(person)
    return clients


@pytest.fixture
def member(django_user_model: type) -> object:
    return django_user_model.objects.create_user(username="member", password="member-pass-123")


@pytest.fixture
def member_client(member: object) -> Client:
    client = Client()
    client.force_login(member)  # type: ignore[arg-type]
    return client


@pytest.fixture
def colour_dataset(db: None) -> Dataset:
    """Three easy classes (red, green, blue) of 40 noisy 16x16 images each."""
    dataset = dataset_create(name="colours")
    images_add(dataset=dataset, items=colour_items(40))
    return dataset


@pytest.fixture(scope="session", autouse=True)
def _train_once_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one folder for every xdist worker
    train_once.use_folder(shared / "trained-once")


def train_now(dataset: Dataset, **config: object) -> ModelVersion:
    """Train in this process (no worker) and return the version it produced. The same
    config on the same pixels trains once per session (tests.train_once)."""
    config = {"arch": "baseline", "epochs": 4, "batch_size": 16, **config}
    job = training_job_start(dataset=dataset, config=TrainConfig.from_dict(config), enqueue=False)
    with train_once.trained_once():
        training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return job.model_version


@pytest.fixture
def trained_version(colour_dataset: Dataset) -> ModelVersion:
    return train_now(colour_dataset)


def subprocess_env() -> dict[str, str]:
    """Environment for a child process that shares this test's database, files and broker."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{db['NAME']}"
    else:
        url = f"postgres://{db['USER'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_ALLOW")}
    env.update(
        DATABASE_URL=url,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR),
        TRAIN_WORK_DIR=str(settings.TRAIN_WORK_DIR),
        CELERY_BROKER_URL=TEST_BROKER_URL,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    return env


class _SharedWorker:
    """One real `celery worker` process kept for the tests that need one running: it
    starts once (and imports TensorFlow once, in its pool process) instead of per test.
    Its files live in one folder that each test using it starts empty."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def running(self, home: Path) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            redis.Redis.from_url(TEST_BROKER_URL).flushdb()  # no messages left by earlier tests
            self.starts += 1
            log = home / f"worker-{self.starts}.log"  # a fresh log: "ready." must be this start's
            self.proc = _start(WORKER_COMMAND, log, subprocess_env())
            _wait_for_line(log, "ready.", self.proc, timeout=60)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


_SHARED_WORKER = _SharedWorker()
WORKER_COMMAND = ["worker", "-Q", "default,gpu", "-c", "1", "--without-gossip", "--without-mingle", "-l", "INFO"]


@pytest.fixture(scope="session")
def _shared_worker(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shared worker's folder; the worker stops before the test database goes."""
    yield tmp_path_factory.mktemp("shared-worker")
    _SHARED_WORKER.stop()


@pytest.fixture
def celery_worker_process(
    transactional_db: None, _shared_worker: Path, settings: object, monkeypatch: pytest.MonkeyPatch
) -> subprocess.Popen[bytes]:
    """A real `celery worker` process on both queues, as `make run` starts it (shared by
    the tests that use it; rows are this test's, its media and caches start empty)."""
    for name in ("media", "model-cache", "training", "keras"):
        shutil.rmtree(_shared_worker / name, ignore_errors=True)
    settings.MEDIA_ROOT = _shared_worker / "media"  # type: ignore[attr-defined]
    settings.MODEL_CACHE_DIR = _shared_worker / "model-cache"  # type: ignore[attr-defined]
    settings.TRAIN_WORK_DIR = _shared_worker / "training"  # type: ignore[attr-defined]
    monkeypatch.setenv("KERAS_HOME", str(_shared_worker / "keras"))
    return _SHARED_WORKER.running(_shared_worker)


def fast_reaper_env(tmp_path: Path) -> dict[str, str]:
    """A child's environment with heartbeats short enough to declare a killed run dead in seconds."""
    env = subprocess_env()
    env.update(TRAIN_HEARTBEAT_INTERVAL="0.5", TRAIN_HEARTBEAT_TIMEOUT="4", VAR_DIR=str(tmp_path / "var"))
    return env


def start_reaper(tmp_path: Path, env: dict[str, str], interval: float = 1.0) -> subprocess.Popen[bytes]:
    """`manage.py reaper`, as the Procfile runs it, a pass every `interval` seconds."""
    log_path = tmp_path / "reaper.log"
    with log_path.open("wb") as log:
        command = [sys.executable, "manage.py", "reaper", "--interval", str(interval)]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path  # type: ignore[attr-defined]
    _wait_for_line(log_path, "reaper: a pass every", proc, timeout=60)
    return proc


@pytest.fixture
def celery_worker_with_reaper(transactional_db: None, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker plus the reaper process (as the Procfile runs them) reaping every
    second. The reaper is its own process: a test that kills the worker's children must not
    take the reaper down with them. The shared worker stops first: it would take this
    test's jobs off the same queue."""
    _SHARED_WORKER.stop()
    env = fast_reaper_env(tmp_path)
    worker = _worker(tmp_path, env)
    proc = next(worker)
    reaper = start_reaper(tmp_path, env)
    try:
        yield proc
    finally:
        _stop(reaper)
        next(worker, None)


def _worker(tmp_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()  # no messages left by earlier tests
    proc = _start(WORKER_COMMAND, tmp_path / "worker.log", env)
    _wait_for_line(tmp_path / "worker.log", "ready.", proc, timeout=60)
    yield proc
    _stop(proc)


def _start(arguments: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A `celery -A classifier_site ...` process logging to `log_path` (kept on it as `log_path`)."""
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        command = [sys.executable, "-m", "celery", "-A", "classifier_site", *arguments]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"worker did not start:\n{path.read_text(errors='replace')[-3000:]}")


# --- a browser (Debian's Chromium through Playwright) --------------------------------

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Chromium as root in a closed network: no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip


@pytest.fixture(scope="module")
def _chromium() -> Iterator[Any]:
    """One Chromium for a module's tests in a row (starting Playwright and Chromium costs
    1.5 s of CPU); pytest ends it before a test of another module runs here."""
    if not shutil.which(CHROMIUM):
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # test makes between browser steps are still plain synchronous ones.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def browser(_chromium: Any) -> Iterator[Any]:
    """The module's Chromium; each `new_page()` opens its own context (no cookies shared),
    and every context a test opened is closed after it."""
    yield _chromium
    for context in _chromium.contexts:
        context.close()
    # A query made while Playwright's loop runs gets a connection of its own: close it
    # too, or PostgreSQL cannot drop the test database.
    connections.close_all()


# --- evaluation reports without training ------------------------------------------

CLASSES = ["blue", "green", "red"]  # the colour dataset's classes, sorted as snapshots sort them


def model_version_row(dataset: Dataset, **config: object) -> ModelVersion:
    """A model version row (no file needed: these tests never load the model)."""
    job = training_job_start(
        dataset=dataset, config=TrainConfig.from_dict({"arch": "baseline", **config}), enqueue=False
    )
    return ModelVersion.objects.create(job=job, dataset=dataset, file="models/none.keras", sha256="0" * 64,
                                       arch="baseline", image_size=16, classes=CLASSES, metrics={})  # fmt: skip


def synthetic_report(dataset: Dataset, version: ModelVersion, mistakes: dict[int, int]) -> Evaluation:
    """A report on the dataset's test images where image id -> wrongly predicted
    class index for the ids in `mistakes`, right (confidently) for the rest."""
    images = list(Image.objects.filter(dataset=dataset, split=Split.TEST).select_related("label").order_by("id"))
    truth = np.array([CLASSES.index(image.label.name) for image in images])
    probabilities = np.full((len(images), 3), 0.05)
    for row, image in enumerate(images):
        guess = mistakes.get(image.pk, truth[row])
        probabilities[row, guess] = 0.9
    metrics = report(truth, probabilities, CLASSES)
    predictions = Predictions(np.array([i.pk for i in images]), truth, probabilities)
    evaluation = evaluation_record(
        version=version, dataset=dataset, split="test", metrics=metrics, predictions=predictions
    )
    version.metrics = metrics
    version.save()
    return evaluation


@pytest.fixture
def synthetic_evaluation(colour_dataset: Dataset) -> tuple[Evaluation, dict[int, int]]:
    tests = list(Image.objects.filter(dataset=colour_dataset, split=Split.TEST).select_related("label"))
    red = [i for i in tests if i.label.name == "red"]
    blue = [i for i in tests if i.label.name == "blue"]
    # Two reds taken for blue, one blue taken for green.
    mistakes = {red[0].pk: 0, red[1].pk: 0, blue[0].pk: 1}
    return synthetic_report(colour_dataset, model_version_row(colour_dataset), mistakes), mistakes
