"""Web pages: who may open them, and what they show."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.images import colour_image
from trainer.models import TrainingJob


def _job_form(dataset, **values):
    form = {"dataset": dataset.pk, "arch": "baseline", "epochs": 2, "batch_size": 32, "learning_rate": 0.001}
    return form | {"image_size": 32, "seed": 0} | values


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/predict/", "/datasets/", "/jobs/", "/jobs/new/"])
def test_pages_need_login(client, path):
    response = client.get(path)
    assert response.status_code == 302 and "login" in response["Location"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/datasets/", "/jobs/", "/jobs/new/"])
def test_admin_pages_are_closed_to_members(member_client, path):
    assert member_client.get(path).status_code == 302  # to the admin login


@pytest.mark.django_db
def test_login_page_and_logout(client, admin_user):
    assert b"Log in" in client.get("/accounts/login/").content
    response = client.post("/accounts/login/", {"username": "admin", "password": "password"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_dataset_page_shows_class_counts_escaped(admin_client, colour_dataset):
    from datasets.services import label_get_or_create

    label_get_or_create(dataset=colour_dataset, name="<script>alert(1)</script>")
    page = admin_client.get(f"/datasets/{colour_dataset.pk}/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "red" in page and "Train a model" in page


@pytest.mark.django_db
def test_train_form_creates_a_queued_job(admin_client, colour_dataset):
    response = admin_client.post("/jobs/new/", _job_form(colour_dataset, epochs=2))
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.status == "queued" and job.config["epochs"] == 2
    page = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'hx-trigger="every 2s"' in page and "Queued" in page


@pytest.mark.django_db
def test_train_form_shows_errors(admin_client, colour_dataset):
    response = admin_client.post("/jobs/new/", _job_form(colour_dataset, epochs=0))
    assert response.status_code == 200 and b"epochs: must be between 1 and 1000, got 0" in response.content
    assert not TrainingJob.objects.exists()


@pytest.mark.django_db
def test_finished_job_page_stops_polling_and_shows_result(admin_client, trained_version):
    page = admin_client.get(f"/jobs/{trained_version.job.pk}/progress/").content.decode()
    assert "hx-trigger" not in page and "Succeeded" in page and trained_version.name in page


@pytest.mark.django_db
def test_predict_page_shows_top_classes(member_client, trained_version):
    upload = SimpleUploadedFile("blue.png", colour_image("blue", seed=77))
    page = member_client.post("/predict/", {"images": upload}).content.decode()
    assert 'id="result-1"' in page
    assert page.index(">blue<") < page.index(">red<")  # best first
    assert trained_version.name in page
    assert "Wrong?" not in page  # only admins add images to datasets


@pytest.mark.django_db
def test_predict_page_rejects_non_images_with_a_message(member_client, trained_version):
    upload = SimpleUploadedFile("cat.jpg", b"definitely not a jpeg")
    response = member_client.post("/predict/", {"images": upload})
    assert response.status_code == 400 and b"not an image" in response.content


@pytest.mark.django_db(transaction=True)  # the checks run in threads: they see committed rows only
def test_health_endpoints(client):
    from trainer.jobs.reaper import reaper_pass

    assert client.get("/healthz").content == b"ok\n"
    never = client.get("/readyz", HTTP_ACCEPT="application/json")
    assert never.status_code == 500 and "the reaper has never run" in never.json()["Reaper()"]
    reaper_pass()
    ready = client.get("/readyz", HTTP_ACCEPT="application/json")
    assert ready.status_code == 200
    assert set(ready.json()) == {"Database(alias='default')", "Storage(alias='default')", "Broker()", "Reaper()"}


@pytest.mark.django_db
def test_readyz_reports_a_broker_outage(client, monkeypatch):
    from classifier_site.celery import app

    monkeypatch.setattr(app.conf, "broker_url", "redis://127.0.0.1:9/0")
    ready = client.get("/readyz", HTTP_ACCEPT="application/json")
    assert ready.status_code == 500
    assert "broker unreachable" in ready.json()["Broker()"]


@pytest.mark.django_db
def test_new_job_form_has_an_advanced_section_and_each_architectures_defaults(admin_client):
    page = admin_client.get("/jobs/new/").content.decode()
    assert '<details id="advanced"' in page and 'name="label_smoothing"' in page and 'name="fine_tune_epochs"' in page
    assert 'id="arch-presets"' in page and '"baseline": {"arch": "baseline"' in page


@pytest.mark.django_db
def test_job_list_filters_and_run_again(admin_client, colour_dataset):
    admin_client.post("/jobs/new/", _job_form(colour_dataset, epochs=2))
    admin_client.post("/jobs/new/", _job_form(colour_dataset, arch="resnet", epochs=3))
    baseline, resnet = TrainingJob.objects.order_by("pk")
    assert resnet.config["optimizer"] == "sgd"  # fields left out took resnet's defaults
    listed = admin_client.get("/jobs/?arch=baseline").content.decode()
    assert f"/jobs/{baseline.pk}/" in listed and f"/jobs/{resnet.pk}/" not in listed
    assert "No jobs match these filters" in admin_client.get("/jobs/?status=succeeded").content.decode()
    response = admin_client.post(f"/jobs/{baseline.pk}/repeat/")
    again = TrainingJob.objects.latest("pk")
    assert response["Location"] == f"/jobs/{again.pk}/" and again.config == baseline.config
    page = admin_client.get(f"/jobs/{again.pk}/").content.decode()
    assert 'id="loss-chart"' in page and 'id="job-history"' in page and "Run again" in page
