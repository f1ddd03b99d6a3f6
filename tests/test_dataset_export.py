"""Exporting a dataset (issue 16, item 15): the zip's layout, the round trip through the
importer into a fresh site, the page, the API, the command and the worker's run."""

import csv
import hashlib
import io
import json
import zipfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from classifier_site.runs import RunStatus
from datasets.exports import dataset_export_request, dataset_export_run, dataset_export_write
from datasets.labelling import image_label_set
from datasets.models import ChangeSource, Dataset, DatasetExport, Image, LabelChange, Split
from datasets.services import dataset_create, images_add
from tests.images import colour_image, write_zip

pytestmark = pytest.mark.django_db

# Names a folder cannot hold as they are, and two that differ only by case.
AWKWARD = ["a/b", "..", "Cat", "cat", "x\\y"]


def _content(dataset: Dataset) -> dict[str, tuple[str | None, str]]:
    """What an export must carry over: each image's class and split, by content."""
    rows = Image.objects.filter(dataset=dataset).values_list("sha256", "label__name", "split")
    return {sha: (label, split) for sha, label, split in rows}


@pytest.fixture
def mixed(admin_user) -> Dataset:
    """Three colours and the awkward class names, every split, unlabelled images, a label
    history. Red has no validation images at all: an importer that tops validation up
    from train (as it does for a train/test archive) would change its splits."""
    dataset = dataset_create(name="mixed", val_fraction=0.3, test_fraction=0.2, split_seed=5)
    items = [(f"{c}-{i}.png", colour_image(c, seed=i), c) for c in ("red", "green", "blue") for i in range(12)]
    items += [(f"{n}-{i}.png", colour_image("red", seed=500 + 10 * k + i), n) for k, n in enumerate(AWKWARD)
              for i in range(2)]  # fmt: skip
    items += [(f"loose-{i}.png", colour_image("green", seed=900 + i), None) for i in range(4)]
    images_add(dataset=dataset, items=items)
    images = Image.objects.filter(dataset=dataset)
    images.update(split=Split.TRAIN)
    for name, split, count in (("red", Split.TEST, 3), ("green", Split.VALIDATION, 1), ("blue", Split.TEST, 2),
                               ("cat", Split.VALIDATION, 1), (None, Split.VALIDATION, 1)):  # fmt: skip
        chosen = images.filter(label__name=name) if name else images.filter(label__isnull=True)
        images.filter(pk__in=list(chosen.values_list("pk", flat=True)[:count])).update(split=split)
    first = images.filter(label__name="red").first()
    assert first is not None
    image_label_set(image=first, label_name="green", user=admin_user, source=ChangeSource.WORKBENCH)
    image_label_set(image=first, label_name="red", user=admin_user, source=ChangeSource.API)
    return dataset


def _fresh_site(tmp_path: Path) -> None:
    """Another site: no rows of the old one, an empty media folder."""
    Dataset.objects.all().delete()
    settings.MEDIA_ROOT = tmp_path / "fresh-media"


def test_an_export_imports_into_a_fresh_site_as_the_same_images_classes_and_splits(mixed, tmp_path, capsys):
    before = _content(mixed)
    assert Split.VALIDATION not in {split for label, split in before.values() if label == "red"}
    zip_path = tmp_path / "mixed.zip"
    call_command("export_dataset", "mixed", "--output", str(zip_path))
    assert str(zip_path) in capsys.readouterr().out
    _fresh_site(tmp_path)
    call_command("import_dataset", str(zip_path), "--name", "mixed again", "--json")
    report = json.loads(capsys.readouterr().out)
    again = Dataset.objects.get(name="mixed again")
    assert _content(again) == before
    assert set(again.labels.values_list("name", flat=True)) == {"red", "green", "blue", *AWKWARD}
    assert report["imported"] == len(before) and report["format"] == "zip + CSV manifest"
    # The history and description ride along for people; the importer skips them, saying so.
    assert {s["file"] for s in report["skipped"]} == {"label_history.json", "dataset.json"}
    for image in Image.objects.filter(dataset=again):
        assert default_storage.exists(image.file.name)


def test_the_zip_holds_class_folders_per_split_a_manifest_and_the_label_history(mixed, tmp_path):
    written = dataset_export_write(dataset=mixed, output=tmp_path / "x.zip")
    with zipfile.ZipFile(written.path) as archive:
        names = set(archive.namelist())
        manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
        history = json.loads(archive.read("label_history.json"))
        description = json.loads(archive.read("dataset.json"))
        images = {row["filename"]: archive.read(row["filename"]) for row in manifest}
    stored = {i.sha256: i for i in Image.objects.filter(dataset=mixed).select_related("label")}
    assert names == {*images, "manifest.csv", "label_history.json", "dataset.json"}
    assert list(manifest[0]) == ["filename", "label", "split", "sha256"] and len(manifest) == len(stored)
    for row in manifest:
        image = stored[row["sha256"]]
        assert row["label"] == (image.label.name if image.label else "") and row["split"] == image.split
        with default_storage.open(image.file.name) as fh:
            assert images[row["filename"]] == fh.read()  # byte for byte: the same SHA-256
        folders = row["filename"].split("/")
        assert folders[0] == image.split and len(folders) == (3 if image.label else 2)  # unlabelled: in the split
    red = next(r for r in manifest if r["label"] == "red")
    assert red["filename"] == f"{red['split']}/red/{red['sha256']}.png"
    assert {r["filename"].split("/")[1] for r in manifest if r["label"] in AWKWARD} == {
        "a_b", "_..", "Cat", "cat (2)", "x_y",
    }  # fmt: skip
    changes = LabelChange.objects.filter(dataset=mixed).order_by("pk")
    assert [(c["old_label"], c["new_label"], c["source"], c["user"]) for c in history] == [
        ("red", "green", "workbench", "admin"), ("green", "red", "api", "admin"),
    ]  # fmt: skip
    assert history[0]["image_sha256"] == changes[0].image.sha256
    assert description["dataset"] == {"name": "mixed", "description": "", "val_fraction": 0.3,
                                      "test_fraction": 0.2, "split_seed": 5}  # fmt: skip
    assert description["images"] == len(stored) and description["unlabelled"] == 4
    blue = Counter(Image.objects.filter(dataset=mixed, label__name="blue").values_list("split", flat=True))
    assert written.report["classes"]["blue"] == {"train": blue["train"], "val": 0, "test": 2}


def test_a_train_test_archive_still_draws_validation_from_train(tmp_path):
    """Only an upload that names validation images keeps its train images in train."""
    entries = {f"{s}/red/{i}.png": colour_image("red", seed=i + 100 * (s == "test")) for s in ("train", "test")
               for i in range(10)}  # fmt: skip
    dataset = dataset_create(name="tt", val_fraction=0.2)
    call_command("import_dataset", str(write_zip(tmp_path / "tt.zip", entries)), "--name", "tt")
    splits = Counter(Image.objects.filter(dataset=dataset).values_list("split", flat=True))
    assert splits == {"train": 6, "val": 4, "test": 10}
    entries[f"val/red/{0}.png"] = colour_image("red", seed=999)
    other = dataset_create(name="ttv", val_fraction=0.2)
    call_command("import_dataset", str(write_zip(tmp_path / "ttv.zip", entries)), "--name", "ttv")
    assert Counter(Image.objects.filter(dataset=other).values_list("split", flat=True)) == {
        "train": 10, "val": 1, "test": 10,
    }  # fmt: skip


def test_a_missing_or_damaged_image_file_fails_the_export_naming_it(mixed, tmp_path):
    damaged, missing = Image.objects.filter(dataset=mixed).order_by("pk")[:2]
    default_storage.save(damaged.file.name, ContentFile(b"not the same bytes"))
    default_storage.delete(missing.file.name)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CommandError) as refused:
        call_command("export_dataset", "mixed", "--output", str(out / "x.zip"))
    message = str(refused.value)
    assert message.startswith("2 image files are missing or damaged") and "verify_storage" in message
    assert f"image {damaged.pk} ({damaged.file.name}): file damaged" in message
    assert f"image {missing.pk} ({missing.file.name}): file missing" in message
    assert list(out.iterdir()) == []  # no zip, not even half of one
    export = dataset_export_run(export_id=dataset_export_request(dataset=mixed, enqueue=False).pk)
    assert export is not None and export.status == RunStatus.FAILED and "file damaged" in export.error
    assert not export.file and not default_storage.exists(f"exports/dataset-{mixed.pk}")


def test_command_errors_and_default_name(mixed, tmp_path, monkeypatch, capsys):
    with pytest.raises(CommandError, match="no dataset 'nope'"):
        call_command("export_dataset", "nope")
    with pytest.raises(CommandError, match="no such folder"):
        call_command("export_dataset", "mixed", "--output", str(tmp_path / "missing" / "x.zip"))
    monkeypatch.chdir(tmp_path)
    call_command("export_dataset", str(mixed.pk), "--json")
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == str(tmp_path / f"mixed-{mixed.pk}-export.zip")
    assert summary["images"] == Image.objects.filter(dataset=mixed).count() and summary["label_changes"] == 2
    assert zipfile.ZipFile(summary["path"]).testzip() is None


# --- the run: request, worker, storage -----------------------------------------------------------


def test_a_request_is_queued_once_and_the_worker_stores_the_zip(mixed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        first = dataset_export_request(dataset=mixed)
        again = dataset_export_request(dataset=mixed)
    assert first.pk == again.pk and first.status == RunStatus.QUEUED and len(queued) == 2  # resent: harmless
    done = dataset_export_run(export_id=first.pk)
    assert done is not None and done.status == RunStatus.SUCCEEDED and done.error == ""
    assert done.processed == done.total == Image.objects.filter(dataset=mixed).count()
    assert done.file.name.startswith(f"exports/dataset-{mixed.pk}/") and done.file_size > 0
    with default_storage.open(done.file.name) as fh:
        assert zipfile.ZipFile(fh).read("manifest.csv").startswith(b"filename,label,split,sha256")
    assert dataset_export_run(export_id=first.pk) == done  # a duplicate delivery writes nothing


def test_a_new_export_replaces_the_old_one_and_its_file(mixed, django_capture_on_commit_callbacks):
    old = dataset_export_run(export_id=dataset_export_request(dataset=mixed, enqueue=False).pk)
    images_add(dataset=mixed, items=[("new.png", colour_image("blue", seed=4242), "blue")])
    with django_capture_on_commit_callbacks(execute=True):  # the old file goes once the rows are gone
        new = dataset_export_run(export_id=dataset_export_request(dataset=mixed, enqueue=False).pk)
    assert old is not None and new is not None and new.pk != old.pk and new.status == RunStatus.SUCCEEDED
    assert list(DatasetExport.objects.filter(dataset=mixed)) == [new]
    assert not default_storage.exists(old.file.name) and default_storage.exists(new.file.name)
    assert new.report["images"] == old.report["images"] + 1


def test_an_export_whose_worker_died_no_longer_blocks_the_next(mixed):
    stuck = dataset_export_request(dataset=mixed, enqueue=False)
    long_ago = timezone.now() - timedelta(hours=1)
    DatasetExport.objects.filter(pk=stuck.pk).update(status=RunStatus.RUNNING, started_at=long_ago,
                                                     heartbeat_at=long_ago)  # fmt: skip
    fresh = dataset_export_request(dataset=mixed, enqueue=False)
    stuck.refresh_from_db()
    assert fresh.pk != stuck.pk and fresh.status == RunStatus.QUEUED
    assert stuck.status == RunStatus.FAILED and "worker stopped" in stuck.error


def test_exports_go_to_the_default_queue():
    from classifier_site.celery import app

    assert app.amqp.router.route({}, "datasets.tasks.export_dataset")["queue"].name == "default"


# --- page and API -------------------------------------------------------------------------------


def test_the_dataset_page_asks_for_an_export_and_offers_the_download(admin_client, mixed):
    page = admin_client.get(f"/datasets/{mixed.pk}/").content.decode()
    assert 'id="export"' in page and "Export the dataset" in page and "Download" not in page
    asked = admin_client.post(f"/datasets/{mixed.pk}/export/")
    assert asked.status_code == 302 and asked["Location"] == f"/datasets/{mixed.pk}/#export"
    export = DatasetExport.objects.get(dataset=mixed)
    card = admin_client.get(f"/datasets/{mixed.pk}/export/").content.decode()
    assert "waiting for a worker" in card and 'hx-trigger="every 2s"' in card  # polls while queued
    assert admin_client.get(f"/datasets/{mixed.pk}/export/download/").status_code == 404
    dataset_export_run(export_id=export.pk)
    card = admin_client.post(f"/datasets/{mixed.pk}/export/", HTTP_HX_REQUEST="true").content.decode()
    assert "Download" in card  # the finished one stays downloadable while the next is made
    download = admin_client.get(f"/datasets/{mixed.pk}/export/download/")
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="mixed-{mixed.pk}-export.zip"'
    assert zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))).testzip() is None


def test_the_api_asks_follows_and_downloads_an_export(admin_user, mixed, tmp_path):
    api = APIClient()
    api.force_authenticate(admin_user)
    url = f"/api/v1/datasets/{mixed.pk}/export/"
    assert api.get(url).status_code == 404  # never exported
    asked = api.post(url)
    assert asked.status_code == 202 and asked.json()["status"] == "queued" and asked.json()["download_url"] is None
    assert api.get(f"{url}download/").status_code == 404
    dataset_export_run(export_id=asked.json()["id"])
    done = api.get(url).json()
    assert done["status"] == "succeeded" and done["download_url"] == f"http://testserver{url}download/"
    assert done["report"]["unlabelled"] == 4 and done["report"]["label_changes"] == 2
    response = api.get(f"{url}download/")
    body = b"".join(response.streaming_content)
    assert response.status_code == 200 and hashlib.sha256(body).hexdigest() == done["sha256"]
    assert len(body) == done["file_size"]


def test_exports_are_for_admins_only(client, member_client, mixed):
    dataset_export_run(export_id=dataset_export_request(dataset=mixed, enqueue=False).pk)
    for path in (f"/datasets/{mixed.pk}/export/", f"/datasets/{mixed.pk}/export/download/"):
        assert "/login/" in member_client.get(path)["Location"]
        assert "/login/" in client.get(path)["Location"]
    assert "/login/" in member_client.post(f"/datasets/{mixed.pk}/export/")["Location"]
    api = APIClient()
    assert api.post(f"/api/v1/datasets/{mixed.pk}/export/").status_code == 401
    assert member_client.get(f"/api/v1/datasets/{mixed.pk}/export/download/").status_code == 403
    assert DatasetExport.objects.filter(dataset=mixed).count() == 1  # nobody else asked for one
