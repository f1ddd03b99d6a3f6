"""verify_storage and the restore drill (issue 16, item 16): every file a row names is in
storage with its stored SHA-256, orphans are listed (and removed on request), and a
backup taken and restored the way the README says verifies clean."""

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import connection

from datasets.exports import dataset_export_request, dataset_export_run
from datasets.models import Dataset, Image
from datasets.services import dataset_create, images_add, import_create
from tests.conftest import ROOT, subprocess_env
from tests.factories import EvaluationFactory, ModelExportFactory, ModelVersionFactory, stored
from tests.images import colour_image, colour_items
from trainer.models import ModelVersion

HOURS_AGO = time.time() - 3 * 3600


def _site() -> tuple[Dataset, ModelVersion]:
    """A site with a file of every kind: images and thumbnails, a queued import's upload,
    a dataset export, a model version with its ONNX files, a model export, report charts."""
    dataset = dataset_create(name="colours")
    images_add(dataset=dataset, items=colour_items(5))
    images_add(dataset=dataset, items=[("big.png", colour_image("red", seed=1, size=200), "red")])  # a thumbnail
    import_create(dataset=dataset, upload=ContentFile(b"zip bytes", name="later.zip"), enqueue=False)
    dataset_export_run(export_id=dataset_export_request(dataset=dataset, enqueue=False).pk)
    version = ModelVersionFactory(
        job__dataset=dataset,
        onnx_file=stored("models/job-1/x.onnx", b"onnx"),
        onnx_check_file=stored("models/job-1/x.onnx.check.npz", b"check"),
    )
    ModelExportFactory(model_version=version)  # .keras: the version's own file
    EvaluationFactory(model_version=version, dataset=dataset)
    return dataset, version


def _verify(*options: str) -> tuple[str, str | None]:
    """The command's output, and its error (None when it exits 0)."""
    out = io.StringIO()
    try:
        call_command("verify_storage", *options, stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def _age(name: str) -> None:
    os.utime(default_storage.path(name), (HOURS_AGO, HOURS_AGO))


@pytest.mark.django_db
def test_a_consistent_site_verifies_clean():
    dataset, _ = _site()
    out, error = _verify()
    assert error is None and "Storage is consistent." in out
    images = Image.objects.filter(dataset=dataset).count()
    # Every image, the export's zip and the one model file (the .keras export shares it) are hashed.
    assert f"{images + 2} checked against their SHA-256" in out
    found = json.loads(_verify("--json")[0])
    assert found["ok"] and found["missing"] == found["damaged"] == found["orphans"] == []
    # Besides the images: a thumbnail, the upload, the zip, three model files and three charts.
    assert found["files"] == found["named"] == images + 1 + 1 + 1 + 3 + 3


@pytest.mark.django_db
def test_missing_and_damaged_files_are_named_with_their_rows_and_exit_non_zero():
    dataset, version = _site()
    image = Image.objects.filter(dataset=dataset).first()
    assert image is not None
    big = Image.objects.get(dataset=dataset, original_name="big.png")
    default_storage.delete(image.file.name)
    default_storage.save(version.file.name, ContentFile(b"bit rot"))
    default_storage.delete(big.thumbnail.name)
    default_storage.delete(version.onnx_file)
    out, error = _verify()
    assert error == "storage is not consistent: 3 missing, 2 damaged"
    assert f"missing  {image.file.name}  (image {image.pk})" in out
    assert f"missing  {big.thumbnail.name}  (image {big.pk} (thumbnail))" in out
    assert f"missing  {version.onnx_file}  (model version {version.pk} (onnx))" in out
    assert f"damaged  {version.file.name}  (model version {version.pk}: its SHA-256 differs)" in out
    assert "(model export" in out and "damaged" in out  # the .keras export names the same file
    assert "Storage is consistent" not in out


@pytest.mark.django_db
def test_orphans_are_listed_and_removed_on_request_but_recent_ones_are_kept():
    _site()
    old = stored("datasets/1/ab/left-by-a-killed-import.png", b"x")
    partial = stored("models/job-9/abc.keras.123-456.partial", b"half")
    recent = stored("datasets/1/cd/being-written.png", b"y")
    _age(old)
    _age(partial)
    out, error = _verify()
    assert error == "storage is not consistent: 2 orphans (--delete-orphans removes the orphans)"
    assert f"orphan   {old}" in out and f"orphan   {partial}" in out
    assert f"recent   {recent}" in out
    out, error = _verify("--delete-orphans")
    assert error is None and "Storage is consistent; 2 orphans deleted." in out
    assert not default_storage.exists(old) and not default_storage.exists(partial)
    assert default_storage.exists(recent)
    assert _verify("--grace-minutes", "0", "--delete-orphans")[1] is None
    assert not default_storage.exists(recent)
    assert _verify()[1] is None  # every file a row names is still there


@pytest.mark.django_db
def test_deleting_orphans_never_touches_a_named_file_while_another_is_missing():
    dataset, _ = _site()
    names = {i.file.name for i in Image.objects.filter(dataset=dataset)}
    gone = sorted(names)[0]
    default_storage.delete(gone)
    _, error = _verify("--delete-orphans", "--grace-minutes", "0")
    assert error == "storage is not consistent: 1 missing"
    assert all(default_storage.exists(n) for n in names - {gone})


# --- the restore drill ----------------------------------------------------------------------------


def _backup_database(target: Path) -> None:
    """What the README says: SQLite's online backup, or pg_dump's custom format."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        with sqlite3.connect(db["NAME"]) as source, sqlite3.connect(target) as copy:
            source.backup(copy)
        return
    subprocess.run(["pg_dump", *_pg_args(), "-Fc", "-d", db["NAME"], "-f", str(target)], check=True)


def _restore_database(backup: Path, home: Path) -> tuple[str, str | None]:
    """A fresh database from the backup: its DATABASE_URL, and the PostgreSQL database to drop."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        restored = home / "restored.sqlite3"
        shutil.copyfile(backup, restored)
        return f"sqlite:///{restored}", None
    name = f"{db['NAME']}_restored_{uuid.uuid4().hex[:8]}"
    subprocess.run(["createdb", *_pg_args(), name], check=True)
    subprocess.run(["pg_restore", *_pg_args(), "--no-owner", "-d", name, str(backup)], check=True)
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER'] or 'postgres'}@{host}:{port}/{name}", name


def _pg_args() -> list[str]:
    db = connection.settings_dict
    return ["-h", db["HOST"] or "127.0.0.1", "-p", str(db["PORT"] or 5432), "-U", db["USER"] or "postgres"]


def _copy_media(source: Path, target: Path) -> None:
    """`rsync -a source/ target/` as the README says (`cp -a` where rsync is not installed)."""
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", f"{source}/", f"{target}/"], check=True)
    else:
        subprocess.run(["cp", "-a", f"{source}/.", str(target)], check=True)


def _verify_in(database_url: str, media: Path) -> subprocess.CompletedProcess[str]:
    env = {**subprocess_env(), "DATABASE_URL": database_url, "MEDIA_ROOT": str(media)}
    command = [sys.executable, "manage.py", "verify_storage"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.django_db(transaction=True)
def test_a_restored_backup_verifies_clean_in_a_fresh_database_and_media_folder(tmp_path):
    dataset, _ = _site()
    images = Image.objects.filter(dataset=dataset).count()
    backup = tmp_path / "backup"
    backup.mkdir()
    _backup_database(backup / "db.dump")  # the database first, then the media (the README's order)
    _copy_media(Path(settings.MEDIA_ROOT), backup / "media")
    shutil.rmtree(settings.MEDIA_ROOT)  # the old site is gone
    media = tmp_path / "restored-media"
    _copy_media(backup / "media", media)
    url, drop = _restore_database(backup / "db.dump", tmp_path)
    try:
        clean = _verify_in(url, media)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "Storage is consistent." in clean.stdout
        assert f"{images + 2} checked against their SHA-256" in clean.stdout
        next(p for p in media.rglob("*.png") if "datasets" in p.parts).unlink()  # the drill can fail
        broken = _verify_in(url, media)
        assert broken.returncode == 1 and "storage is not consistent: 1 missing" in broken.stderr
    finally:
        if drop:
            subprocess.run(["dropdb", *_pg_args(), "--if-exists", drop], check=True)
