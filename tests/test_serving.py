"""Serving: the registry (promotion, gate, rollback, threshold), the predictor
(reloads, failed loads, batching, "unknown"), the predict API and page, and
corrections that flow back into a dataset."""

import base64
import logging
import threading
import time

import numpy as np
import pytest
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from classification.predictor import get_predictor
from datasets.models import Image, Label
from tests.conftest import model_version_row, train_now
from tests.images import colour_image, encode
from trainer.ml.metrics import rejection_threshold
from trainer.models import ModelVersion, Promotion
from trainer.registry.services import (
    PromotionRefused,
    model_version_promote,
    model_version_rollback,
    model_version_set_threshold,
)


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def fast_reload(settings: object) -> None:
    settings.PREDICT_RELOAD_SECONDS = 0.0  # type: ignore[attr-defined]


def _with_f1(version: ModelVersion, f1: float) -> ModelVersion:
    version.metrics = {"accuracy": f1, "macro_avg": {"f1-score": f1}}
    version.save()
    return version


def _upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


# --- rejection threshold ---------------------------------------------------------------


def test_rejection_threshold_drops_answers_that_are_more_often_wrong_than_right():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.55, 0.45], [0.52, 0.48], [0.51, 0.49]])
    truth = np.array([0, 0, 1, 1, 1, 0])  # the three least confident: wrong, wrong, right
    chosen = rejection_threshold(truth, probabilities)
    assert chosen == {"threshold": 0.7, "coverage": 0.5, "accuracy": 1.0, "count": 6}


def test_rejection_threshold_is_off_for_an_always_right_or_hopeless_model():
    right = rejection_threshold(np.array([0, 1]), np.array([[0.9, 0.1], [0.4, 0.6]]))
    assert right["threshold"] == 0.0 and right["coverage"] == 1.0
    hopeless = rejection_threshold(np.array([1, 0]), np.array([[0.9, 0.1], [0.4, 0.6]]))
    assert hopeless["threshold"] == 0.0


# --- registry ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_finished_job_records_a_complete_version_and_the_first_is_promoted(trained_version):
    version = trained_version
    version.refresh_from_db()
    assert version.is_promoted and version.promoted_at is not None
    assert version.snapshot_hash == version.job.snapshot_hash and len(version.snapshot_hash) == 64
    assert version.file_size == version.file.size > 0
    rejection = version.metrics["rejection"]
    assert rejection["count"] > 0 and version.rejection_threshold == rejection["threshold"]
    assert list(Promotion.objects.values_list("model_version", "previous")) == [(version.pk, None)]
    second = train_now(version.dataset, epochs=1)
    assert not second.is_promoted  # a later version waits for an admin


@pytest.mark.django_db
def test_the_gate_refuses_a_worse_version_unless_forced(colour_dataset, settings, admin_user):
    good = _with_f1(model_version_row(colour_dataset), 0.9)
    worse = _with_f1(model_version_row(colour_dataset), 0.8)
    model_version_promote(version=good)
    with pytest.raises(PromotionRefused, match=r"macro-F1 0.800, below the promoted v\d+ \(0.900\)"):
        model_version_promote(version=worse)
    assert ModelVersion.objects.get(is_promoted=True) == good
    model_version_promote(version=worse, force=True, user=admin_user)
    assert ModelVersion.objects.get(is_promoted=True) == worse
    assert Promotion.objects.first().forced  # the history says it was forced, and by whom
    assert Promotion.objects.first().user == admin_user
    settings.PROMOTION_GATE = False
    model_version_promote(version=good)
    model_version_promote(version=worse)  # gate off: no refusal


@pytest.mark.django_db
def test_rollback_walks_back_through_the_promotions(colour_dataset):
    a, b, c = (model_version_row(colour_dataset) for _ in range(3))
    for version in (a, b, c):
        model_version_promote(version=version)
    assert model_version_rollback(version=c) == b
    assert model_version_rollback(version=b) == a  # two steps back, not forth
    with pytest.raises(PromotionRefused, match="no version to roll back to"):
        model_version_rollback(version=a)
    assert list(ModelVersion.objects.filter(is_promoted=True)) == [a]
    assert [p.rollback for p in Promotion.objects.order_by("id")] == [False, False, False, True, True]


@pytest.mark.django_db(transaction=True)
def test_concurrent_promotions_leave_exactly_one_promoted(colour_dataset):
    from django.db import connection

    versions = [model_version_row(colour_dataset) for _ in range(4)]
    errors: list[BaseException] = []

    def promote_many(offset: int) -> None:
        try:
            for i in range(6):
                model_version_promote(version=versions[(offset + i) % len(versions)])
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=promote_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert ModelVersion.objects.filter(is_promoted=True).count() == 1


@pytest.mark.django_db
def test_threshold_must_be_a_probability(colour_dataset):
    version = model_version_row(colour_dataset)
    with pytest.raises(ValueError, match="between 0 and 1"):
        model_version_set_threshold(version=version, threshold=1.5)
    assert model_version_set_threshold(version=version, threshold=0.4).rejection_threshold == 0.4


# --- predictor -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_predictor_switches_to_a_new_promotion_without_a_restart(colour_dataset, fast_reload):
    first = train_now(colour_dataset, epochs=1)
    second = train_now(colour_dataset, epochs=1)
    predictor = get_predictor()
    image = colour_image("red", seed=5)
    assert predictor.predict(image).version.pk == first.pk
    model_version_promote(version=second, force=True)
    # The old version answers while the new one loads in the background: never an error.
    assert predictor.predict(image).version.pk in (first.pk, second.pk)
    predictor.wait_for_reload()
    assert predictor.predict(image).version.pk == second.pk


@pytest.mark.django_db
def test_a_promoted_version_that_fails_to_load_leaves_the_old_one_serving(colour_dataset, fast_reload, caplog):
    first = train_now(colour_dataset, epochs=1)
    second = train_now(colour_dataset, epochs=1, seed=2)  # another model: its own file and checksum
    predictor = get_predictor()
    image = colour_image("green", seed=6)
    predictor.predict(image)
    with open(second.file.path, "wb") as fh:
        fh.write(b"not a model")
    model_version_promote(version=second, force=True)
    with caplog.at_level(logging.ERROR, logger="classification.predictor"):
        predictor.refresh(wait=True)
        assert predictor.predict(image).version.pk == first.pk
    assert f"model version {second.pk} not loaded" in caplog.text and "checksum mismatch" in caplog.text


@pytest.mark.django_db
def test_the_predictor_checks_the_database_at_most_once_per_interval(
    trained_version, settings, django_assert_num_queries
):
    settings.PREDICT_RELOAD_SECONDS = 60
    predictor = get_predictor()
    image = colour_image("blue", seed=8)
    predictor.predict(image)
    with django_assert_num_queries(0):
        for _ in range(5):
            predictor.predict(image)


@pytest.mark.django_db
def test_batched_answers_equal_single_ones(trained_version):
    predictor = get_predictor()
    images = [colour_image(c, seed=s) for s, c in enumerate(["red", "green", "blue", "red"])]
    batch = predictor.predict_many(images, top_k=3)
    for data, batched in zip(images, batch, strict=True):
        single = predictor.predict(data, top_k=3)
        assert [s.label for s in single.scores] == [s.label for s in batched.scores]
        assert np.allclose([s.probability for s in single.scores], [s.probability for s in batched.scores], atol=1e-5)


@pytest.mark.django_db
def test_below_the_threshold_the_answer_is_unknown(trained_version, fast_reload):
    predictor = get_predictor()
    purple = encode(np.full((16, 16, 3), (128, 0, 128), np.uint8))  # half red, half blue
    model_version_set_threshold(version=trained_version, threshold=0.0)
    unsure = predictor.predict(purple)
    assert not unsure.is_unknown and unsure.label == unsure.scores[0].label
    assert unsure.scores[0].probability < 1.0
    model_version_set_threshold(version=trained_version, threshold=(unsure.scores[0].probability + 1) / 2)
    answer = predictor.predict(purple)
    assert answer.is_unknown and answer.label == "unknown" and answer.scores[0].label == unsure.scores[0].label
    assert predictor.predict(colour_image("red", seed=9)).label == "red"  # a clear image still gets its answer


# --- API -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_answers_many_images_in_order(api, member, trained_version):
    api.force_authenticate(member)
    files = [_upload(f"{c}.png", colour_image(c, seed=20 + i)) for i, c in enumerate(["blue", "red", "green"])]
    response = api.post("/api/v1/predict/", {"images": files, "top_k": 2}, format="multipart")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_version"]["id"] == trained_version.pk
    assert [r["filename"] for r in body["results"]] == ["blue.png", "red.png", "green.png"]
    assert [r["label"] for r in body["results"]] == ["blue", "red", "green"]
    assert all(len(r["predictions"]) == 2 and r["unknown"] is False for r in body["results"])


@pytest.mark.django_db
def test_api_refuses_too_many_images_and_names_the_bad_one(api, member, trained_version, settings):
    api.force_authenticate(member)
    settings.PREDICT_MAX_IMAGES = 2
    files = [_upload(f"{n}.png", colour_image("red", seed=n)) for n in range(3)]
    response = api.post("/api/v1/predict/", {"images": files}, format="multipart")
    assert response.status_code == 413 and response.json()["detail"] == "Too many images: at most 2 per request."
    files = [_upload("ok.png", colour_image("red", seed=1)), _upload("bad.png", b"GIF89a broken")]
    response = api.post("/api/v1/predict/", {"images": files}, format="multipart")
    assert response.status_code == 400 and response.json()["detail"].startswith("bad.png: not a usable image")
    response = api.post("/api/v1/predict/", {"image": files[0], "top_k": "many"}, format="multipart")
    assert response.status_code == 400 and "top_k" in response.json()["detail"]


@pytest.mark.django_db
def test_api_drops_no_file_silently_and_answers_too_many_in_json(api, member, trained_version, settings):
    api.force_authenticate(member)
    two = [_upload(f"{n}.png", colour_image("red", seed=n)) for n in range(2)]
    response = api.post("/api/v1/predict/", {"image": two}, format="multipart")  # two files in "image"
    assert response.status_code == 400 and response.json()["detail"].startswith('Send one file as "image"')
    both = {
        "image": _upload("a.png", colour_image("red", seed=1)),
        "images": [_upload("b.png", colour_image("red", seed=2))],
    }
    assert api.post("/api/v1/predict/", both, format="multipart").status_code == 400
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3  # Django's own limit (100 by default) refuses while parsing
    many = [_upload(f"{n}.png", b"x") for n in range(5)]
    response = api.post("/api/v1/predict/", {"images": many}, format="multipart")
    assert response.status_code == 413 and response["Content-Type"] == "application/json"
    assert response.json()["detail"].startswith("Too many images")


@pytest.mark.django_db
def test_api_is_throttled_per_user(api, member, trained_version, settings):
    api.force_authenticate(member)
    settings.PREDICT_THROTTLE_RATE = "2/hour"  # one window for the whole test
    _forget_throttle(member.pk, 3600)
    codes = [_post(api, n).status_code for n in range(3)]
    assert codes == [200, 200, 429]
    response = _post(api, 9)
    assert "throttled" in response.json()["detail"] and int(response["Retry-After"]) > 0
    settings.PREDICT_THROTTLE_RATE = "none"
    assert _post(api, 10).status_code == 200
    _forget_throttle(member.pk, 3600)


@pytest.mark.django_db
def test_the_page_shares_the_apis_throttle(api, member, member_client, trained_version, settings):
    api.force_authenticate(member)
    settings.PREDICT_THROTTLE_RATE = "2/hour"
    _forget_throttle(member.pk, 3600)
    assert _post(api, 1).status_code == 200  # one by the API...
    page = member_client.post("/predict/", {"images": [_upload("a.png", colour_image("red", seed=2))]})
    assert page.status_code == 200  # ...one by the page...
    page = member_client.post("/predict/", {"images": [_upload("b.png", colour_image("red", seed=3))]})
    assert page.status_code == 429 and "Too many predictions" in page.content.decode() and int(page["Retry-After"]) > 0
    assert _post(api, 4).status_code == 429  # ...and the budget is spent for both
    assert member_client.get("/predict/").status_code == 200  # showing the page costs nothing
    _forget_throttle(member.pk, 3600)


def _forget_throttle(ident: object, duration: int) -> None:
    from classification.api import throttle_key
    from classifier_site.throttling import forget_leases

    window = int(time.time() // duration)
    caches["throttle"].delete_many([throttle_key(ident, window), throttle_key(ident, window + 1)])
    forget_leases()


def _post(api: APIClient, seed: int):
    return api.post("/api/v1/predict/", {"image": _upload("r.png", colour_image("red", seed=seed))}, format="multipart")


@pytest.mark.django_db
def test_anonymous_prediction_only_when_the_setting_allows(api, trained_version, settings):
    assert _post(api, 1).status_code == 401
    settings.PREDICT_ALLOW_ANONYMOUS = True
    settings.PREDICT_ANON_THROTTLE_RATE = "1/hour"
    _forget_throttle("127.0.0.1", 3600)
    assert _post(api, 2).status_code == 200
    assert _post(api, 3).status_code == 429  # anonymous clients get their own, lower rate
    _forget_throttle("127.0.0.1", 3600)
    assert api.get("/api/v1/models/").status_code == 401  # nothing else opens


@pytest.mark.django_db
def test_api_promote_rollback_and_threshold(api, admin_user, member, colour_dataset):
    good = _with_f1(model_version_row(colour_dataset), 0.9)
    worse = _with_f1(model_version_row(colour_dataset), 0.7)
    api.force_authenticate(member)
    assert api.post(f"/api/v1/models/{good.pk}/promote/").status_code == 403
    api.force_authenticate(admin_user)
    assert api.post(f"/api/v1/models/{good.pk}/promote/").json()["is_promoted"] is True
    refused = api.post(f"/api/v1/models/{worse.pk}/promote/")
    assert refused.status_code == 409 and "below the promoted" in refused.json()["detail"]
    forced = api.post(f"/api/v1/models/{worse.pk}/promote/", {"force": True}, format="json")
    assert forced.status_code == 200 and forced.json()["is_promoted"] is True
    back = api.post(f"/api/v1/models/{worse.pk}/rollback/")
    assert back.status_code == 200 and back.json()["id"] == good.pk
    assert api.post(f"/api/v1/models/{good.pk}/rollback/").status_code == 409
    bad = api.post(f"/api/v1/models/{good.pk}/threshold/", {"rejection_threshold": 2}, format="json")
    assert bad.status_code == 400
    ok = api.post(f"/api/v1/models/{good.pk}/threshold/", {"rejection_threshold": 0.35}, format="json")
    assert ok.json()["rejection_threshold"] == 0.35


@pytest.mark.django_db
def test_openapi_documents_the_predict_errors_and_examples(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    for path in ("/api/v1/predict/", "/api/v1/datasets/{dataset_id}/predict/"):
        answers = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "404", "413", "415", "429", "503"} <= set(answers), path
        ok = answers["200"]["content"]["application/json"]
        assert set(ok["examples"]) >= {"Image", "Images"}
        shapes = schema["components"]["schemas"][ok["schema"]["$ref"].rsplit("/", 1)[1]]["oneOf"]
        assert {shape["$ref"].rsplit("/", 1)[1] for shape in shapes} == {"Prediction", "BatchPrediction"}
    for shape in ("Prediction", "BatchPrediction"):  # each names the dataset and the version that answered
        assert {"dataset", "model_version"} <= set(schema["components"]["schemas"][shape]["properties"])
    assert "get" in schema["paths"]["/api/v1/predict/"] and "get" not in schema["paths"][path]


# --- prediction page and corrections ----------------------------------------------------


@pytest.mark.django_db
def test_page_classifies_several_images_and_explains_the_bad_one(admin_client, trained_version):
    files = [_upload("red.png", colour_image("red", seed=31)), _upload("notes.txt", b"hello"),
             _upload("blue.png", colour_image("blue", seed=32))]  # fmt: skip
    page = admin_client.post("/predict/", {"images": files}).content.decode()
    assert page.count('class="card result"') == 3
    assert "notes.txt" in page and "Not a usable image: not an image." in page
    assert page.count("Wrong?") == 2  # admins may correct each good answer


@pytest.mark.django_db
def test_page_says_unknown_below_the_threshold(member_client, trained_version):
    purple = encode(np.full((16, 16, 3), (128, 0, 128), np.uint8))
    best = get_predictor().predict(purple).scores[0].probability
    model_version_set_threshold(version=trained_version, threshold=(best + 1) / 2)
    get_predictor().refresh()
    page = member_client.post("/predict/", {"images": _upload("purple.png", purple)})
    assert "<strong>unknown</strong>" in page.content.decode()


@pytest.mark.django_db
def test_a_correction_adds_the_image_to_the_chosen_dataset(admin_client, trained_version):
    data = colour_image("red", seed=4321)
    form = {"image_data": base64.b64encode(data).decode(), "filename": "odd.png", "label": "crimson",
            "dataset": trained_version.dataset_id}  # fmt: skip
    response = admin_client.post("/predict/correct", form, follow=True)
    assert "Added odd.png to colours as crimson." in response.content.decode()
    image = Image.objects.get(dataset=trained_version.dataset, original_name="odd.png")
    assert image.label == Label.objects.get(dataset=trained_version.dataset, name="crimson")
    again = admin_client.post("/predict/correct", {**form, "label": "red"}, follow=True)
    assert "already in colours; it is now labelled red" in again.content.decode()


@pytest.mark.django_db
def test_a_bad_correction_is_refused_and_adds_nothing(admin_client, member_client, trained_version):
    before = Image.objects.count()
    form = {"image_data": "!!not base64!!", "filename": "x.png", "label": "red", "dataset": trained_version.dataset_id}
    page = admin_client.post("/predict/correct", form, follow=True).content.decode()
    assert "Correction not saved" in page
    svg = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'><script>x</script></svg>").decode()
    page = admin_client.post("/predict/correct", {**form, "image_data": svg}, follow=True).content.decode()
    assert "SVG is not supported" in page
    assert member_client.post("/predict/correct", form).status_code == 302  # to the login page: admins only
    assert Image.objects.count() == before


# --- registry pages ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_registry_pages_promote_roll_back_and_set_the_threshold(admin_client, member_client, colour_dataset):
    good = _with_f1(model_version_row(colour_dataset), 0.9)
    worse = _with_f1(model_version_row(colour_dataset), 0.6)
    assert member_client.get("/models/").status_code == 302
    admin_client.post(f"/models/{good.pk}/promote")
    listing = admin_client.get("/models/").content.decode()
    assert f"v{good.pk}" in listing and "promoted" in listing
    detail = admin_client.get(f"/models/{worse.pk}/").content.decode()
    assert 'id="gate"' in detail and "Promote anyway" in detail
    refused = admin_client.post(f"/models/{worse.pk}/promote", follow=True).content.decode()
    assert "below the promoted" in refused
    admin_client.post(f"/models/{worse.pk}/promote", {"force": "1"})
    assert ModelVersion.objects.get(is_promoted=True) == worse
    page = admin_client.get(f"/models/{worse.pk}/").content.decode()
    assert f"Roll back to v{good.pk}" in page
    admin_client.post(f"/models/{worse.pk}/rollback")
    assert ModelVersion.objects.get(is_promoted=True) == good
    admin_client.post(f"/models/{good.pk}/threshold", {"rejection_threshold": "0.25"})
    good.refresh_from_db()
    assert good.rejection_threshold == 0.25
    shown = admin_client.post(f"/models/{good.pk}/threshold", {"rejection_threshold": "abc"}, follow=True)
    assert "between 0 and 1" in shown.content.decode()


def test_model_files_are_fsynced_and_images_are_not(settings, tmp_path, monkeypatch):
    import os

    from django.core.files.base import ContentFile

    from classifier_site.storage import AtomicFileSystemStorage

    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    storage = AtomicFileSystemStorage(location=tmp_path, allow_overwrite=True)
    storage.save("images/a.png", ContentFile(b"x"))
    assert synced == []
    storage.save("models/job-1/abc.keras", ContentFile(b"model"))
    assert len(synced) == 2  # the file, then its folder
    assert (tmp_path / "models/job-1/abc.keras").read_bytes() == b"model"
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.django_db
def test_predict_command_prints_the_answer_per_file(trained_version, tmp_path, capsys):
    import json

    from django.core.management import CommandError, call_command

    good = tmp_path / "g.png"
    good.write_bytes(colour_image("green", seed=77))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    with pytest.raises(CommandError, match="1 of 2 images could not be classified"):
        call_command("predict", str(good), str(bad), "--json")
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["label"] == "green" and first["unknown"] is False and first["model_version"] == trained_version.pk
    assert second["error"] == "not a usable image: not an image"


@pytest.mark.django_db
def test_a_deleted_token_stops_working_within_seconds(api, member, trained_version, monkeypatch):
    from rest_framework.authtoken.models import Token

    from classifier_site import authentication

    token = Token.objects.create(user=member)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert _post(api, 1).status_code == 200
    token.delete()
    assert _post(api, 2).status_code == 200  # remembered for a few seconds: no query per request
    clock = time.monotonic() + authentication.TOKEN_CACHE_SECONDS + 0.1
    monkeypatch.setattr(authentication.time, "monotonic", lambda: clock)
    assert _post(api, 3).status_code == 401
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert _post(api, 4).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_an_idle_process_picks_up_a_promotion_on_its_own(colour_dataset, settings, monkeypatch):
    from classification import predictor as module

    settings.PREDICT_RELOAD_SECONDS = 0.2
    first = train_now(colour_dataset, epochs=1)
    second = train_now(colour_dataset, epochs=1)
    monkeypatch.setattr(module.Predictor, "watch", True)
    predictor = get_predictor()
    assert predictor.predict(colour_image("red", seed=1)).version.pk == first.pk
    model_version_promote(version=second, force=True)
    deadline = time.monotonic() + 30
    while _loaded_ids(predictor) != [second.pk] and time.monotonic() < deadline:  # no request meanwhile
        time.sleep(0.05)
    assert _loaded_ids(predictor) == [second.pk]
    watcher = predictor._watcher
    monkeypatch.setattr(module, "_predictor", module.Predictor())  # the watcher sees it is retired
    watcher.join(5)
    assert not watcher.is_alive()


def _loaded_ids(predictor: object) -> list[int]:
    return [loaded.version.pk for loaded in predictor.loaded()]  # type: ignore[attr-defined]


def test_a_mistyped_throttle_rate_fails_the_checks_not_each_request(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    from classification.api import parse_rate

    assert parse_rate("1200/min") == (1200, 60) and parse_rate("20/s") == (20, 1) and parse_rate("none")[0] is None
    settings.PREDICT_THROTTLE_RATE = "lots"
    with pytest.raises(SystemCheckError, match="PREDICT_THROTTLE_RATE='lots' is not a rate"):
        call_command("check")


@pytest.mark.django_db
def test_pixels_are_limited_per_request_not_only_per_image(api, member, member_client, trained_version, settings):
    api.force_authenticate(member)
    settings.PREDICT_MAX_REQUEST_PIXELS = 2 * 16 * 16  # two of the 16x16 test images
    two = [_upload(f"{n}.png", colour_image("red", seed=n)) for n in range(2)]
    assert api.post("/api/v1/predict/", {"images": two}, format="multipart").status_code == 200
    three = [_upload(f"{n}.png", colour_image("red", seed=n)) for n in range(3)]
    response = api.post("/api/v1/predict/", {"images": three}, format="multipart")
    assert response.status_code == 413 and "megapixels in all" in response.json()["detail"]
    three = [_upload(f"{n}.png", colour_image("red", seed=n)) for n in range(3)]
    page = member_client.post("/predict/", {"images": three})
    assert page.status_code == 413 and "megapixels in all" in page.content.decode()
