"""Learning from production: off by default (nothing kept), on: every answer below the
threshold and a share of the others kept with the image, which lands unlabelled in the
labelling queue with its confidence; retention and the size cap; the drift panel; a
failure to keep an answer never fails the answer."""

import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from classification import capture
from classification.capture import capture_set, captures_expire
from classification.drift import drift
from classification.models import LiveCapture, LivePrediction
from classification.predictor import get_predictor
from datasets.models import Image, Label
from datasets.selectors import workbench_images
from tests.images import colour_image, encode
from trainer.registry.services import model_version_set_threshold

pytestmark = pytest.mark.django_db
PURPLE = encode(np.full((16, 16, 3), (128, 0, 128), np.uint8))  # like no class: the model is unsure


@pytest.fixture(autouse=True)
def _fresh_capture_reads():
    """A web process trusts what it read of an opt-in for seconds; tests start afresh."""
    capture._read.clear()
    capture._expired_at.clear()
    yield
    capture._read.clear()


@pytest.fixture
def api(member) -> APIClient:
    client = APIClient()
    client.force_authenticate(member)
    return client


@pytest.fixture
def unsure(trained_version):
    """Purple answers fall below the threshold; red ones do not."""
    best = get_predictor().predict(PURPLE).scores[0].probability
    model_version_set_threshold(version=trained_version, threshold=(best + 1) / 2)
    get_predictor().refresh()
    return trained_version


def _post(api: APIClient, *images: tuple[str, bytes]):
    files = [SimpleUploadedFile(name, data) for name, data in images]
    response = api.post("/api/v1/predict/", {"images": files}, format="multipart")
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_off_by_default_nothing_is_kept(api, unsure):
    before = Image.objects.count()
    _post(api, ("purple.png", PURPLE), ("red.png", colour_image("red", seed=70)))
    assert LivePrediction.objects.count() == 0 and Image.objects.count() == before


def test_on_the_answers_below_the_threshold_land_unlabelled_in_the_queue_least_confident_first(api, unsure):
    dataset = unsure.dataset
    capture_set(dataset=dataset, enabled=True, share=0.0)
    results = _post(api, ("purple.png", PURPLE), ("red.png", colour_image("red", seed=71)))
    assert [r["unknown"] for r in results] == [True, False]
    kept = LivePrediction.objects.get()
    assert kept.unknown and kept.weight == 1.0 and kept.model_version == unsure
    assert kept.confidence == pytest.approx(results[0]["predictions"][0]["probability"])
    image = kept.image
    assert image.dataset == dataset and image.label is None and image.original_name == "live-purple.png"
    assert image.suggestion == kept.label and image.suggestion_confidence == pytest.approx(kept.confidence)
    queue = workbench_images(dataset=dataset, show="unlabelled", order="least_confidence")
    assert queue.first() == image


def test_a_share_of_the_confident_answers_is_kept_and_an_image_once(api, unsure):
    capture_set(dataset=unsure.dataset, enabled=True, share=1.0)
    red = colour_image("red", seed=72)
    _post(api, ("red.png", red))
    _post(api, ("again.png", red))
    rows = list(LivePrediction.objects.order_by("id"))
    assert len(rows) == 2 and [r.unknown for r in rows] == [False, False] and rows[0].weight == 1.0
    assert rows[0].image_id == rows[1].image_id and Image.objects.filter(original_name__startswith="live-").count() == 1


def test_the_cap_and_the_retention_keep_storage_bounded_and_labelled_images_stay(api, unsure, settings):
    dataset = unsure.dataset
    capture_set(dataset=dataset, enabled=True, share=1.0)
    settings.CAPTURE_MAX_IMAGES = 2
    _post(api, *[(f"r{i}.png", colour_image("red", seed=80 + i)) for i in range(3)])
    rows = list(LivePrediction.objects.order_by("id"))
    assert [r.image_id is not None for r in rows] == [True, True, False]  # the third found no room
    first, second = rows[0].image, rows[1].image
    Image.objects.filter(pk=second.pk).update(label=Label.objects.get(dataset=dataset, name="red"))
    LivePrediction.objects.update(created_at=timezone.now() - timedelta(days=settings.CAPTURE_RETENTION_DAYS + 1))
    assert captures_expire(dataset=dataset) == 1
    assert not Image.objects.filter(pk=first.pk).exists() and Image.objects.filter(pk=second.pk).exists()
    assert LivePrediction.objects.count() == 3  # the answers stay, for the drift panel


def test_a_failure_to_keep_an_answer_never_fails_the_answer(api, unsure, monkeypatch, caplog):
    capture_set(dataset=unsure.dataset, enabled=True, share=1.0)

    def broken(**kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("datasets.services.images_add", broken)  # under image_add_or_get
    results = _post(api, ("red.png", colour_image("red", seed=90)))
    assert results[0]["label"] == "red" and "answers not kept" in caplog.text
    assert LivePrediction.objects.count() == 0


def test_the_live_page_turns_it_on_and_shows_the_drift_against_the_test_split(admin_client, api, unsure):
    dataset = unsure.dataset
    url = f"/predict/live/{dataset.pk}/"
    assert admin_client.post(url, {"enabled": "on", "share": "2"}).status_code == 302
    assert not LiveCapture.objects.filter(dataset=dataset).exists()  # a share of 2 was refused
    admin_client.post(url, {"enabled": "on", "share": "0.5"})
    dataset.refresh_from_db()
    assert dataset.live_capture.enabled and dataset.live_capture.share == 0.5
    capture._read.clear()
    _post(api, ("purple.png", PURPLE), ("p2.png", encode(np.full((16, 16, 3), (120, 10, 140), np.uint8))))
    page = admin_client.get(url).content.decode()
    assert 'data-row="test split"' in page and f'data-row="{timezone.now().date().isoformat()}"' in page
    assert "2</strong> images waiting for a label" in page
    chart = json.loads(page.split('<script id="drift-data" type="application/json">')[1].split("</script>")[0])
    today = drift(dataset=dataset).days[0]
    assert chart["days"] == [today.day.isoformat()] and chart["confidence"] == [round(today.confidence, 4)]
    assert chart["test"]["mix"].keys() == chart["mix"].keys() and sum(
        s[0] for s in chart["mix"].values()
    ) == pytest.approx(1, abs=1e-3)
    admin_client.post(url, {"share": "0.5"})  # unchecked: off
    dataset.live_capture.refresh_from_db()
    assert not dataset.live_capture.enabled


def test_the_api_turns_it_on_and_says_what_waits_for_a_label(admin_user, member, unsure):
    admin = APIClient()
    admin.force_authenticate(admin_user)
    url = f"/api/v1/datasets/{unsure.dataset_id}/live-capture/"
    assert admin.get(url).json() == {"enabled": False, "share": 0.05, "kept": 0, "waiting": 0}
    assert admin.put(url, {"share": 0.5}, format="json").status_code == 400  # no `enabled`
    assert admin.put(url, {"enabled": True, "share": 2}, format="json").status_code == 400
    assert admin.put(url, {"enabled": True, "share": 0.0}, format="json").json()["enabled"] is True
    user = APIClient()
    user.force_authenticate(member)
    assert user.get(url).status_code == 403
    _post(user, ("purple.png", PURPLE))
    assert admin.get(url).json() == {"enabled": True, "share": 0.0, "kept": 1, "waiting": 1}
    assert admin.get("/api/v1/datasets/999999/live-capture/").status_code == 404
