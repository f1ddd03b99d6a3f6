"""Where the model looked: occlusion maps on a model whose answer is known to come from
one region, the overlay image, and `explain=true` on the predict API and page."""

import base64
import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from tests.images import colour_image
from trainer.ml.saliency import GRID, occlusion_map, overlay_png


def top_left_model(pixels: np.ndarray) -> np.ndarray:
    """'Bright' is how bright the top-left quarter is: nothing else counts."""
    size = pixels.shape[1]
    bright = pixels[:, : size // 4, : size // 4].mean(axis=(1, 2, 3)) / 255
    return np.stack([bright, 1 - bright], axis=1)


def test_the_map_is_hot_where_the_answer_comes_from_and_cold_elsewhere():
    image = np.full((32, 32, 3), 250, np.uint8)
    heat = occlusion_map(top_left_model, image, 0)
    assert heat.shape == (GRID, GRID) and heat.max() == pytest.approx(1.0)
    assert heat[:2, :2].min() > 0.3 and heat[1, 1] == 1.0  # the quarter the model reads (cells 0-1)
    assert heat[3:, :].max() == 0 and heat[:, 3:].max() == 0  # nothing it ignores


def test_a_class_nothing_lowers_has_an_all_cold_map():
    image = np.full((32, 32, 3), 250, np.uint8)
    assert occlusion_map(top_left_model, image, 1).max() == 0  # hiding only makes "dark" likelier


def test_the_overlay_is_the_image_with_heat_colours_where_the_map_is_hot():
    image = np.full((32, 32, 3), 200, np.uint8)
    heat = np.zeros((GRID, GRID), np.float32)
    heat[0, 0] = 1.0
    picture = np.asarray(Image.open(io.BytesIO(overlay_png(image, heat))))
    assert picture.shape == (32, 32, 3)
    assert picture[1, 1, 0] > picture[1, 1, 2] + 40  # red over the hot corner
    assert (picture[24:, 24:] == 200).all()  # the photo untouched where the map is 0


@pytest.fixture
def api(member) -> APIClient:
    client = APIClient()
    client.force_authenticate(member)
    return client


def _upload(name: str, colour: str, seed: int) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, colour_image(colour, seed=seed))


@pytest.mark.django_db
def test_explain_true_adds_where_the_model_looked_to_each_answer(api, trained_version):
    files = [_upload("red.png", "red", 41), _upload("blue.png", "blue", 42)]
    body = api.post("/api/v1/predict/?explain=true", {"images": files}, format="multipart").json()
    for result in body["results"]:
        why = result["explanation"]
        assert why["method"] == "occlusion" and why["label"] == result["predictions"][0]["label"]
        assert np.array(why["grid"]).shape == (GRID, GRID) and 0 <= np.min(why["grid"]) <= np.max(why["grid"]) <= 1
        png = Image.open(io.BytesIO(base64.b64decode(why["png"])))
        assert png.format == "PNG" and png.size == (trained_version.image_size, trained_version.image_size)
    plain = api.post("/api/v1/predict/", {"image": _upload("red.png", "red", 41)}, format="multipart").json()
    assert "explanation" not in plain  # only when asked for: it costs a batch of model calls


@pytest.mark.django_db
def test_explain_refuses_a_bad_value_and_too_many_images(api, trained_version, settings):
    bad = api.post("/api/v1/predict/", {"image": _upload("a.png", "red", 1), "explain": "maybe"}, format="multipart")
    assert bad.status_code == 400 and bad.json()["detail"] == "explain must be true or false."
    settings.PREDICT_EXPLAIN_MAX_IMAGES = 2
    files = [_upload(f"{n}.png", "red", n) for n in range(3)]
    many = api.post("/api/v1/predict/", {"images": files, "explain": "true"}, format="multipart")
    assert many.status_code == 400 and "at most 2 images" in many.json()["detail"]


@pytest.mark.django_db
def test_the_prediction_page_shows_where_the_model_looked(member_client, trained_version):
    page = member_client.post("/predict/", {"images": _upload("green.png", "green", 43)}).content.decode()
    assert 'alt="where the model looked" src="data:image/png;base64,' in page
    assert "Where it looked for green" in page


@pytest.mark.django_db
def test_the_report_shows_where_the_evaluated_model_looked_in_each_gallery_image(admin_client, trained_version):
    from trainer.models import Evaluation

    evaluation = Evaluation.objects.filter(model_version=trained_version).first()
    prediction = evaluation.predictions.first()
    page = admin_client.get(f"/evaluations/{evaluation.pk}/").content.decode()
    assert f'data-src="/evaluations/{evaluation.pk}/predictions/' in page and "where it looked" in page
    response = admin_client.get(f"/evaluations/{evaluation.pk}/predictions/{prediction.pk}/explain.png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    size = trained_version.image_size
    assert Image.open(io.BytesIO(response.content)).size == (size, size)
    prediction.image.delete()
    gone = admin_client.get(f"/evaluations/{evaluation.pk}/predictions/{prediction.pk}/explain.png")
    assert gone.status_code == 404
