"""Dataset pages and API: upload, import report, grid, class management, permissions."""

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from classifier_site.runs import RunStatus
from datasets.models import Dataset, DatasetImport, Image, Label
from datasets.services import import_run
from tests.images import class_folder_zip, colour_image

pytestmark = pytest.mark.django_db


def _zip_upload(tmp_path, per_class=3) -> SimpleUploadedFile:
    path = class_folder_zip(tmp_path / "colours.zip", per_class=per_class)
    return SimpleUploadedFile("colours.zip", path.read_bytes(), content_type="application/zip")


def test_create_dataset_then_upload_an_archive(admin_client, tmp_path):
    response = admin_client.post("/datasets/new/", {"name": "pets", "description": "", "val_fraction": 0.1,
                                                    "test_fraction": 0.2, "split_seed": 1})  # fmt: skip
    dataset = Dataset.objects.get(name="pets")
    assert response["Location"] == f"/datasets/{dataset.pk}/upload/" and dataset.test_fraction == 0.2
    response = admin_client.post(f"/datasets/{dataset.pk}/upload/", {"archive": _zip_upload(tmp_path)})
    record = DatasetImport.objects.get()
    assert response["Location"] == f"/datasets/imports/{record.pk}/"
    assert record.status == RunStatus.QUEUED and default_storage.exists(record.source.name)
    page = admin_client.get(f"/datasets/imports/{record.pk}/").content.decode()
    assert "Waiting for a worker" in page and 'hx-trigger="every 1s"' in page

    import_run(import_id=record.pk)  # what the worker does
    record.refresh_from_db()
    assert record.status == RunStatus.SUCCEEDED and record.report["imported"] == 9
    assert not record.source and not default_storage.exists(f"imports/{record.pk}")  # upload removed once imported
    page = admin_client.get(f"/datasets/imports/{record.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in page and "<strong>9</strong> images imported" in page


def test_upload_loose_files_with_a_class(admin_client, tmp_path):
    dataset = Dataset.objects.create(name="loose")
    files = [SimpleUploadedFile(f"IMG_{i}.PNG", colour_image("red", seed=i)) for i in range(3)]
    files.append(SimpleUploadedFile("notes.txt", b"not an image"))
    admin_client.post(f"/datasets/{dataset.pk}/upload/", {"images": files, "label": "red"})
    record = import_run(import_id=DatasetImport.objects.get().pk)
    assert record.report["per_class"] == {"red": 3}
    assert [s["reason"] for s in record.report["skipped"]] == ["not an image"]


def test_upload_form_errors(admin_client, tmp_path):
    dataset = Dataset.objects.create(name="d")
    response = admin_client.post(f"/datasets/{dataset.pk}/upload/", {})
    assert response.status_code == 200 and b"Choose either an archive or image files" in response.content
    assert not DatasetImport.objects.exists()


def test_oversized_upload_gets_413_before_reading(admin_client, tmp_path, settings):
    settings.IMPORT_MAX_UPLOAD_BYTES = 1000
    dataset = Dataset.objects.create(name="d")
    response = admin_client.post(f"/datasets/{dataset.pk}/upload/", {"archive": _zip_upload(tmp_path)})
    assert response.status_code == 413 and b"larger than the limit" in response.content
    assert not DatasetImport.objects.exists()


def test_grid_filters_paginate_and_delete_removes_files(
    admin_client, colour_dataset, django_capture_on_commit_callbacks
):
    red = Label.objects.get(dataset=colour_dataset, name="red")
    page = admin_client.get(f"/datasets/{colour_dataset.pk}/?label={red.pk}").content.decode()
    assert page.count('class="tile"') == 40 and "Page 1 of" not in page
    page = admin_client.get(f"/datasets/{colour_dataset.pk}/").content.decode()
    assert page.count('class="tile"') == 48 and "Page 1 of 3 (120 images)" in page
    assert "class-balance-data" in page
    victims = list(Image.objects.filter(label=red)[:2])
    with django_capture_on_commit_callbacks(execute=True):  # files go once the deletion commits
        response = admin_client.post(f"/datasets/{colour_dataset.pk}/images/delete/",
                                     {"image": [v.pk for v in victims], "query": f"label={red.pk}"})  # fmt: skip
    assert response["Location"] == f"/datasets/{colour_dataset.pk}/?label={red.pk}"
    assert Image.objects.filter(label=red).count() == 38
    assert not any(default_storage.exists(v.file.name) for v in victims)


def test_delete_ignores_images_of_other_datasets(admin_client, colour_dataset):
    other = Dataset.objects.create(name="other")
    image = Image.objects.filter(dataset=colour_dataset).first()
    admin_client.post(f"/datasets/{other.pk}/images/delete/", {"image": [image.pk]})
    assert Image.objects.filter(pk=image.pk).exists()


def test_rename_merge_and_delete_classes(admin_client, colour_dataset):
    red, green, blue = (Label.objects.get(dataset=colour_dataset, name=n) for n in ("red", "green", "blue"))
    page = admin_client.post(f"/datasets/classes/{red.pk}/", {"rename": "", "name": "green"}).content.decode()
    assert "already exists: merge into it instead" in page
    admin_client.post(f"/datasets/classes/{red.pk}/", {"rename": "", "name": "crimson"})
    assert Label.objects.get(pk=red.pk).name == "crimson"
    admin_client.post(f"/datasets/classes/{red.pk}/", {"merge": "", "into": green.pk})
    assert not Label.objects.filter(pk=red.pk).exists() and green.images.count() == 80
    admin_client.post(f"/datasets/classes/{blue.pk}/", {"delete": ""})
    assert Image.objects.filter(dataset=colour_dataset, label__isnull=True).count() == 40


def test_dataset_page_warns_about_small_and_unbalanced_classes(admin_client, colour_dataset):
    Image.objects.filter(label__name="red").exclude(pk__in=Image.objects.filter(label__name="red")[:3]).delete()
    page = admin_client.get(f"/datasets/{colour_dataset.pk}/").content.decode()
    assert "Class &#x27;red&#x27; has only 3 images" in page
    assert "Strong imbalance: the largest class has 40 images, the smallest 3" in page


def test_image_files_are_for_admins_only(admin_client, member_client, client, colour_dataset):
    image = Image.objects.filter(dataset=colour_dataset).first()
    response = admin_client.get(f"/datasets/images/{image.pk}/thumbnail/")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == default_storage.open(image.file.name).read()
    assert member_client.get(f"/datasets/images/{image.pk}/original/").status_code == 302
    assert client.get(f"/datasets/images/{image.pk}/original/").status_code == 302
    assert admin_client.get(f"/datasets/images/{image.pk}/passwd/").status_code == 404


# --- API ------------------------------------------------------------------------------------------


@pytest.fixture
def api(admin_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def test_api_images_filter_and_relabel(api, colour_dataset, django_capture_on_commit_callbacks):
    red = Label.objects.get(dataset=colour_dataset, name="red")
    listed = api.get(f"/api/v1/images/?dataset={colour_dataset.pk}&label={red.pk}&split=train").json()
    assert listed["count"] == Image.objects.filter(label=red, split="train").count()
    image = Image.objects.filter(label=red).first()
    assert api.patch(f"/api/v1/images/{image.pk}/", {"label": None}, format="json").status_code == 200
    unlabelled = api.get(f"/api/v1/images/?dataset={colour_dataset.pk}&unlabelled=true").json()
    assert [i["id"] for i in unlabelled["results"]] == [image.pk]
    foreign = Label.objects.create(dataset=Dataset.objects.create(name="x"), name="y")
    bad = api.patch(f"/api/v1/images/{image.pk}/", {"label": foreign.pk}, format="json")
    assert bad.status_code == 400 and "another dataset" in bad.json()["label"][0]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/images/{image.pk}/").status_code == 204
    assert not default_storage.exists(image.file.name)


def test_api_labels_create_rename_merge(api, colour_dataset):
    made = api.post("/api/v1/labels/", {"dataset": colour_dataset.pk, "name": "  purple  "}, format="json")
    assert made.status_code == 201 and made.json()["name"] == "purple"
    dup = api.post("/api/v1/labels/", {"dataset": colour_dataset.pk, "name": "red"}, format="json")
    assert dup.status_code == 400
    red = Label.objects.get(dataset=colour_dataset, name="red")
    assert api.patch(f"/api/v1/labels/{red.pk}/", {"name": "blue"}, format="json").status_code == 400
    merged = api.post(f"/api/v1/labels/{red.pk}/merge/", {"into": made.json()["id"]}, format="json")
    assert merged.json() == {"id": made.json()["id"], "dataset": colour_dataset.pk, "name": "purple", "image_count": 40}


def test_api_import_archive_and_follow_it(api, tmp_path):
    dataset = api.post("/api/v1/datasets/", {"name": "api-set", "test_fraction": 0.2}, format="json").json()
    created = api.post("/api/v1/imports/", {"dataset": dataset["id"], "archive": _zip_upload(tmp_path)})
    assert created.status_code == 201 and created.json()["status"] == "queued"
    import_run(import_id=created.json()["id"])
    done = api.get(f"/api/v1/imports/{created.json()['id']}/").json()
    assert done["status"] == "succeeded" and done["report"]["imported"] == 9 and done["format"] == "zip"
    assert api.get(f"/api/v1/imports/?dataset={dataset['id']}").json()["count"] == 1


def test_api_import_errors(api, tmp_path, settings):
    dataset = Dataset.objects.create(name="d")
    neither = api.post("/api/v1/imports/", {"dataset": dataset.pk})
    assert neither.status_code == 400 and "either `archive` or `files`" in str(neither.json())
    settings.IMPORT_MAX_UPLOAD_BYTES = 100
    huge = api.post("/api/v1/imports/", {"dataset": dataset.pk, "archive": _zip_upload(tmp_path)})
    assert huge.status_code == 413 and "larger than the limit" in huge.json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/images/", "/api/v1/labels/", "/api/v1/imports/"])
def test_dataset_api_is_for_admins(member, path):
    client = APIClient()
    assert client.get(path).status_code == 401
    client.force_authenticate(member)
    assert client.get(path).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_failed_import_can_be_retried_from_its_page(admin_client, tmp_path, monkeypatch):
    dataset = Dataset.objects.create(name="retry")
    admin_client.post(f"/datasets/{dataset.pk}/upload/", {"archive": _zip_upload(tmp_path)})
    record = DatasetImport.objects.get()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("datasets.services._ImageWriter.finish", disk_full)
    assert import_run(import_id=record.pk).status == RunStatus.FAILED
    page = admin_client.get(f"/datasets/imports/{record.pk}/").content.decode()
    assert "Nothing was imported" in page and "Retry" in page
    monkeypatch.undo()
    admin_client.post(f"/datasets/imports/{record.pk}/retry/")
    record.refresh_from_db()
    assert record.status == RunStatus.QUEUED and record.error == ""
    assert import_run(import_id=record.pk).report["imported"] == 9
    assert Image.objects.filter(dataset=dataset).count() == 9


def test_retry_refuses_running_and_finished_imports_but_takes_stale_ones(api, tmp_path):
    from datetime import timedelta

    from django.utils import timezone

    dataset = Dataset.objects.create(name="d")
    created = api.post("/api/v1/imports/", {"dataset": dataset.pk, "archive": _zip_upload(tmp_path)}).json()
    record = DatasetImport.objects.get(pk=created["id"])
    assert api.post(f"/api/v1/imports/{record.pk}/retry/").status_code == 409  # still queued
    DatasetImport.objects.filter(pk=record.pk).update(status="running", started_at=timezone.now())
    refused = api.post(f"/api/v1/imports/{record.pk}/retry/")
    assert refused.status_code == 409 and "still queued or running" in refused.json()["detail"]
    # Its worker died ten minutes ago: no progress since.
    DatasetImport.objects.filter(pk=record.pk).update(started_at=timezone.now() - timedelta(minutes=10))
    assert api.post(f"/api/v1/imports/{record.pk}/retry/").json()["status"] == "queued"
    assert import_run(import_id=record.pk).status == RunStatus.SUCCEEDED
    assert api.post(f"/api/v1/imports/{record.pk}/retry/").status_code == 409
