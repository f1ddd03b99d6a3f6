"""Imports under faults (issue 16, items 7 and 10): a worker killed mid-import is reaped,
its orphan files removed; on SQLite a running import leaves the site usable, and a lock
that outlasts the busy timeout is a 503, not a 500."""

import os
import signal
import sqlite3
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.core.files import File
from django.db import IntegrityError, OperationalError, connection
from rest_framework.test import APIClient

from classifier_site.errors import is_database_unavailable
from classifier_site.runs import RunStatus
from datasets.models import Dataset, DatasetImport, Image, StagedImage
from datasets.services import dataset_create, images_add, import_create, import_local_file, import_progress_key
from tests.conftest import _SHARED_WORKER, TEST_BROKER_URL, _start, _stop, _wait_for_line, subprocess_env
from tests.images import colour_image, colour_items
from trainer.jobs.reaper import reaper_pass
from trainer.models import ReaperPass

sqlite_only = pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"), reason="SQLite's one write lock"
)


def _archive(path: Path, count: int, *, big_every: int = 10) -> Path:
    """`count` distinct images, every `big_every`-th large enough to get a thumbnail of its own."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(count):
            size = 140 if i % big_every == 0 else 16
            archive.writestr(f"{('alpha', 'beta')[i % 2]}/{i:05d}.png", colour_image("red", seed=10_000 + i, size=size))
    return path


def _stored(dataset: Dataset) -> set[str]:
    """The files under a dataset's folders (images and thumbnails), as storage names."""
    media = Path(settings.MEDIA_ROOT)
    roots = [media / "datasets" / str(dataset.pk), media / "thumbnails" / str(dataset.pk)]
    return {str(p.relative_to(media)) for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def _referenced(dataset: Dataset) -> set[str]:
    return {name for pair in Image.objects.filter(dataset=dataset).values_list("file", "thumbnail") for name in pair}


# --- item 7: a worker killed mid-import --------------------------------------------------------------


@pytest.fixture
def import_worker(transactional_db: None, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker of its own on the `default` queue (imports go there), one process in its
    pool, which the test kills. The shared worker stops first: it would take the import."""
    _SHARED_WORKER.stop()
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()  # no messages left by earlier tests
    env = {**subprocess_env(), "IMPORT_THREADS": "1"}
    command = ["worker", "-Q", "default", "-c", "1", "--without-gossip", "--without-mingle", "-l", "INFO"]
    proc = _start(command, tmp_path / "worker.log", env)
    _wait_for_line(tmp_path / "worker.log", "ready.", proc, timeout=60)
    yield proc
    _stop(proc)


def _kill_mid_import(worker: subprocess.Popen[bytes], record: DatasetImport, after: int) -> None:
    """SIGKILL the pool process once the import has committed `after` entries (not all of them)."""
    log: Path = worker.log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record.refresh_from_db()
        live = max(record.processed, cache.get(import_progress_key(record.pk)) or 0)
        if record.status == RunStatus.RUNNING and live >= after:
            break
        assert record.status in (RunStatus.QUEUED, RunStatus.RUNNING), record.error + log.read_text()[-3000:]
        time.sleep(0.02)
    for pid in Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split():
        os.kill(int(pid), signal.SIGKILL)  # the import dies with no chance to clean up
    time.sleep(0.2)
    record.refresh_from_db()
    assert record.status == RunStatus.RUNNING and not Image.objects.filter(original_name__endswith="01499.png").exists()


def _dataset_with_committed_images(name: str) -> Dataset:
    dataset = dataset_create(name=name)
    # Ten committed images (eleven files: one has a thumbnail): they must survive the clean-up.
    images_add(dataset=dataset, items=[*colour_items(3), ("big.png", colour_image("green", seed=1, size=200), "green")])
    return dataset


def _start_import(dataset: Dataset, archive: Path) -> DatasetImport:
    with archive.open("rb") as upload:
        return import_create(dataset=dataset, upload=File(upload, name=archive.name))  # sent now: no transaction


def _reap_when_stale() -> dict[str, object]:
    time.sleep(settings.IMPORT_STALE_SECONDS + 0.5)
    reaper_pass()
    return ReaperPass.objects.get(pk=1).summary["imports"]


def _wait_until_finished(record: DatasetImport, timeout: float) -> DatasetImport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record.refresh_from_db()
        if record.is_finished:
            break
        time.sleep(0.2)
    return record


IMAGES = 1500


def test_a_killed_import_is_requeued_its_orphans_removed_and_the_retry_imports_it_once(
    import_worker, tmp_path, settings
):
    settings.IMPORT_STALE_SECONDS, settings.IMPORT_MAX_ATTEMPTS = 1, 3
    dataset = _dataset_with_committed_images("requeued")
    committed = _referenced(dataset)
    record = _start_import(dataset, _archive(tmp_path / "many.zip", IMAGES))
    _kill_mid_import(import_worker, record, after=128)
    orphans = _stored(dataset) - committed
    assert orphans and Image.objects.filter(dataset=dataset).count() == len(committed) - 1  # written, never shown

    summary = _reap_when_stale()
    assert summary["requeued"] == [record.pk] and summary["failed"] == []
    assert summary["files_removed"] == len(orphans), summary
    # The worker's next pool process takes the retry, which imports everything exactly once.
    record = _wait_until_finished(record, timeout=120)
    log = import_worker.log_path.read_text()
    assert record.status == RunStatus.SUCCEEDED, record.error + log[-3000:]
    assert record.attempts == 2 and record.report["imported"] == IMAGES and record.report["duplicates"] == 0
    assert Image.objects.filter(dataset=dataset).count() == IMAGES + len(committed) - 1
    assert _stored(dataset) == _referenced(dataset) and not StagedImage.objects.exists()


def test_a_killed_import_out_of_attempts_fails_saying_why_and_leaves_no_orphans(import_worker, tmp_path, settings):
    settings.IMPORT_STALE_SECONDS, settings.IMPORT_MAX_ATTEMPTS = 1, 1
    dataset = _dataset_with_committed_images("failed")
    other = _dataset_with_committed_images("bystander")  # the same images, in another dataset's folders
    committed, others = _referenced(dataset), _referenced(other)
    record = _start_import(dataset, _archive(tmp_path / "many.zip", IMAGES))
    _kill_mid_import(import_worker, record, after=128)
    assert _stored(dataset) - committed

    summary = _reap_when_stale()
    assert summary["failed"] == [record.pk] and summary["requeued"] == [] and summary["files_removed"] > 0
    record.refresh_from_db()
    assert record.status == RunStatus.FAILED and record.finished_at is not None
    assert "The worker stopped during attempt 1 of 1" in record.error and "not retrying" in record.error
    assert _stored(dataset) == committed and _stored(other) == others  # committed files kept, orphans gone
    assert Image.objects.filter(dataset=dataset).count() == 10 and not StagedImage.objects.exists()
    assert not dataset.labels.filter(name__in=["alpha", "beta"]).exists()  # nothing of the dead import shows
    assert reaper_pass() and ReaperPass.objects.get(pk=1).summary["imports"]["failed"] == []  # once only


# --- item 10: SQLite stays usable while an import runs ------------------------------------------------


@pytest.fixture
def short_busy_timeout(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """SQLite's busy timeout cut to 2 s for every connection this test opens (threads too)."""
    connection.close()
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "timeout", 2)
    yield 2.0
    connection.close()


@pytest.fixture
def api(admin_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def _label_change(api: APIClient, image: Image, label: str) -> tuple[int, float]:
    started = time.monotonic()
    payload = {"changes": [{"image": image.pk, "label": label, "version": image.label_version}]}
    response = api.post(f"/api/v1/datasets/{image.dataset_id}/label/", payload, format="json")
    return response.status_code, time.monotonic() - started


@sqlite_only
def test_a_label_change_during_a_long_import_waits_for_a_batch_not_the_import(
    short_busy_timeout, api, tmp_path, settings, monkeypatch
):
    settings.IMPORT_THREADS = 1
    dataset = dataset_create(name="busy")
    images_add(dataset=dataset, items=colour_items(1))
    image = Image.objects.filter(dataset=dataset).first()
    archive = _archive(tmp_path / "slow.zip", 400)
    from datasets import services

    prepare = services._ImageWriter._prepare

    def slow_prepare(self, entry):  # 10 ms an image: the import lasts twice the busy timeout
        time.sleep(0.01)
        return prepare(self, entry)

    monkeypatch.setattr(services._ImageWriter, "_prepare", slow_prepare)
    results: list[DatasetImport] = []

    def run() -> None:
        try:
            results.append(import_local_file(dataset=dataset, path=archive))
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while (cache.get(import_progress_key(_running_import(dataset))) or 0) < 128 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, took = _label_change(api, image, "blue")
    finally:
        thread.join(timeout=60)
    assert status == 200 and took < 1.0, (status, took)
    assert results and results[0].status == RunStatus.SUCCEEDED and results[0].report["imported"] == 400
    assert Image.objects.get(pk=image.pk).label.name == "blue"


def _running_import(dataset: Dataset) -> int:
    return DatasetImport.objects.filter(dataset=dataset).values_list("pk", flat=True).first() or 0


@sqlite_only
def test_a_write_that_outwaits_the_busy_timeout_is_a_503_json_not_a_500(short_busy_timeout, api):
    dataset = dataset_create(name="locked")
    images_add(dataset=dataset, items=colour_items(1))
    image = Image.objects.filter(dataset=dataset).first()
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock past the timeout
    try:
        response = api.post(
            f"/api/v1/datasets/{dataset.pk}/label/",
            {"changes": [{"image": image.pk, "label": "blue", "version": 0}]},
            format="json",
        )
    finally:
        holder.rollback()
        holder.close()
    assert response.status_code == 503 and response["Content-Type"] == "application/json"
    assert "database is busy" in response.json()["detail"] and response["Retry-After"]
    assert Image.objects.get(pk=image.pk).label.name == "red"  # nothing changed


def test_locked_and_unreachable_databases_are_told_apart_from_real_errors():
    assert is_database_unavailable(OperationalError("database is locked"))
    assert is_database_unavailable(OperationalError("connection failed: Connection refused"))
    assert not is_database_unavailable(OperationalError("no such table: datasets_image"))
    assert not is_database_unavailable(IntegrityError("UNIQUE constraint failed"))
