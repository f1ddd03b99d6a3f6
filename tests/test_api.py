"""REST API: authentication, permissions, and clear errors for bad input."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.images import colour_image, encode


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def _predict(client, data: bytes, name: str = "x.png", **extra):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/api/v1/predict/", {"image": SimpleUploadedFile(name, data), **extra}, format="multipart")


@pytest.mark.django_db
def test_predict_with_token_names_the_version(api, member, trained_version):
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member).key}")
    response = _predict(api, colour_image("green", seed=999), top_k=2)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_version"]["id"] == trained_version.pk
    assert body["model_version"]["sha256"] == trained_version.sha256
    assert body["predictions"][0]["label"] == "green"
    assert len(body["predictions"]) == 2
    assert 0 <= body["predictions"][1]["probability"] <= body["predictions"][0]["probability"] <= 1


@pytest.mark.django_db
def test_predict_requires_authentication(api, trained_version):
    response = _predict(api, colour_image("red", seed=1))
    assert response.status_code == 401
    assert "credentials" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (colour_image("red", seed=1, size=64)[:300], 400, "not a usable image: corrupt or truncated PNG file."),
        (b"plain text", 400, "photo.jpg: not a usable image: not an image."),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "photo.jpg: SVG is not supported"),
        (encode(__import__("numpy").zeros((8000, 8000), "uint8")), 400, "exceeds 40 megapixels"),
    ],
)
def test_predict_bad_images_get_400_json(api, member, trained_version, data, status, message):
    api.force_authenticate(member)
    response = _predict(api, data, name="photo.jpg")
    assert response.status_code == status
    assert message in response.json()["detail"]


@pytest.mark.django_db
def test_predict_missing_file_and_too_large(api, member, trained_version, settings):
    api.force_authenticate(member)
    response = api.post("/api/v1/predict/", {}, format="multipart")
    assert response.status_code == 400 and '"image"' in response.json()["detail"]
    settings.PREDICT_MAX_UPLOAD_BYTES = 100
    response = _predict(api, colour_image("red", seed=1, size=64))
    assert response.status_code == 413 and "larger than" in response.json()["detail"]


@pytest.mark.django_db
def test_predict_without_any_model_is_503(api, member):
    api.force_authenticate(member)
    response = _predict(api, colour_image("red", seed=1))
    assert response.status_code == 503
    assert response.json()["detail"] == "No model is being served yet: train one, then promote it."


@pytest.mark.django_db
def test_damaged_model_file_is_never_served(api, member, trained_version, settings):
    (settings.MEDIA_ROOT / trained_version.file.name).write_bytes(b"half a model")
    api.force_authenticate(member)
    response = _predict(api, colour_image("red", seed=1))
    assert response.status_code == 503 and "checksum mismatch" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/datasets/", "/api/v1/jobs/", "/api/v1/models/"])
def test_admin_endpoints_by_role(api, member, admin_user, colour_dataset, path):
    assert api.get(path).status_code == 401
    api.force_authenticate(member)
    assert api.get(path).status_code == 403
    api.force_authenticate(admin_user)
    assert api.get(path).status_code == 200


@pytest.mark.django_db
def test_create_job_validates_config(api, admin_user, colour_dataset):
    api.force_authenticate(admin_user)
    bad = api.post("/api/v1/jobs/", {"dataset": colour_dataset.pk, "config": {"epochs": -1}}, format="json")
    assert bad.status_code == 400 and "epochs" in bad.json()["config"][0]
    good = api.post("/api/v1/jobs/", {"dataset": colour_dataset.pk, "config": {"epochs": 2}}, format="json")
    assert good.status_code == 201
    assert good.json()["status"] == "queued" and good.json()["config"]["epochs"] == 2
    cancelled = api.post(f"/api/v1/jobs/{good.json()['id']}/cancel/")
    assert cancelled.json()["status"] == "cancelled"


@pytest.mark.django_db
def test_dataset_detail_lists_classes(api, admin_user, colour_dataset):
    api.force_authenticate(admin_user)
    body = api.get(f"/api/v1/datasets/{colour_dataset.pk}/").json()
    assert body["image_count"] == 120
    assert {c["name"]: c["train"] + c["val"] + c["test"] for c in body["classes"]} == {
        "red": 40,
        "green": 40,
        "blue": 40,
    }


@pytest.mark.django_db
def test_openapi_schema_documents_predict(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"/api/v1/predict/" in response.content


def test_openapi_schema_is_valid_and_documents_every_endpoint(tmp_path):
    from django.core.management import call_command

    schema = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(schema))
    text = schema.read_text()
    for path in ("/api/v1/datasets/", "/api/v1/images/", "/api/v1/labels/{id}/merge/", "/api/v1/imports/{id}/retry/",
                 "/api/v1/jobs/{id}/cancel/", "/api/v1/jobs/{id}/repeat/", "/api/v1/models/{id}/promote/",
                 "/api/v1/predict/"):  # fmt: skip
        assert f"  {path}:" in text


@pytest.mark.django_db
def test_job_config_takes_the_architectures_defaults_and_jobs_filter_and_repeat(api, admin_user, colour_dataset):
    api.force_authenticate(admin_user)
    made = api.post("/api/v1/jobs/", {"dataset": colour_dataset.pk, "config": {"arch": "baseline"}}, format="json")
    assert made.status_code == 201
    assert made.json()["config"]["optimizer"] == "adam" and made.json()["config"]["batch_size"] == 64
    resnet = api.post("/api/v1/jobs/", {"dataset": colour_dataset.pk}, format="json").json()
    assert resnet["config"]["arch"] == "auto" and resnet["recipe"] == ""  # settled by the worker
    assert [j["id"] for j in api.get("/api/v1/jobs/?arch=baseline").json()["results"]] == [made.json()["id"]]
    assert api.get("/api/v1/jobs/?arch=vgg").status_code == 400  # not a choice
    again = api.post(f"/api/v1/jobs/{made.json()['id']}/repeat/")
    assert again.status_code == 201 and again.json()["id"] not in (made.json()["id"], resnet["id"])
    assert again.json()["config"] == made.json()["config"]
    assert again.json()["snapshot_hash"] == made.json()["snapshot_hash"] != ""
    bad = api.post("/api/v1/jobs/", {"dataset": colour_dataset.pk, "config": {"flip": "sometimes"}}, format="json")
    assert bad.status_code == 400 and "not true or false" in bad.json()["config"][0]
