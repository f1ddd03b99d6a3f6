"""Data quality through the site: an analysis on a small generated dataset with planted
faults (a copy across train and test, a copy under another class, a mislabelled photo,
an image like no other) finds each of them; keep-one and move act on a group; the leak's
effect on the test score; "more like this" opens the workbench on the nearest images,
from an image of the dataset or from an uploaded photo; the API; damaged vectors;
features reused from a training job's cache.

The backbone is installed here the way an operator installs a file: its "features" are
the pixels themselves (32 x 32 x 3), so what counts as a copy is known exactly and an
analysis takes a second."""

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.urls import reverse
from PIL import Image as PILImage

from datasets.models import Dataset, Image, Split
from datasets.selectors import workbench_images
from datasets.services import dataset_create, images_add, images_delete
from tests.conftest import model_version_row, synthetic_report, train_now
from trainer.ml.backbones import Backbone
from trainer.models import QualityRun
from trainer.quality.selectors import duplicate_groups, leak_effect, similar_images, similar_to_upload
from trainer.quality.services import QualityRefused, duplicates_keep_one, duplicates_move, quality_run, quality_start
from trainer.quality.vectors import VectorsUnavailable

pytestmark = pytest.mark.django_db

PER_CLASS = 16
COLOURS = {"blue": (50, 50, 200), "green": (50, 200, 50), "red": (200, 50, 50)}


def photo(colour: str, seed: int) -> np.ndarray:
    """A 32 x 32 'photo': its class's colour under strong noise of its own."""
    noise = np.random.default_rng(seed).integers(-110, 110, size=(32, 32, 3))
    return np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def copy_of(pixels: np.ndarray) -> bytes:
    """The same photo, a little brighter: other bytes, other SHA-256."""
    return png(np.clip(pixels.astype(int) + 4, 0, 255).astype(np.uint8))


def stranger() -> np.ndarray:
    """Black and white squares: like none of the colour photos."""
    board = (np.indices((32, 32)).sum(axis=0) // 4 % 2 * 255).astype(np.uint8)
    return np.stack([board] * 3, axis=-1)


def pixel_backbone_file(path: Path) -> Path:
    import keras
    from keras import layers

    inputs = keras.Input(shape=(32, 32, 3))
    features = layers.Flatten(name="flat")(layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, layers.Dense(2, name="head")(features)).save(path)
    return path


@pytest.fixture
def pixels(tmp_path: Path) -> Backbone:
    from trainer.ml.weights import install_file

    file = pixel_backbone_file(tmp_path / "pixels.keras")
    return install_file(path=file, name="raw", feature_layer="flat", image_size=32, builtin_preprocessing=True,
                        title="Pixels").backbone  # fmt: skip


@pytest.fixture
def planted(pixels: Backbone) -> Dataset:
    return plant()


def plant() -> Dataset:
    """The dataset with its planted faults (the backbone fixture installed first)."""
    dataset = dataset_create(name="planted")
    items = [(f"{c}-{i}.png", png(photo(c, 100 * n + i)), c) for n, c in enumerate(COLOURS) for i in range(PER_CLASS)]
    items += [
        ("leak.png", copy_of(photo("red", 200)), "red"),  # red-0's copy, put in test below
        ("conflict.png", copy_of(photo("green", 101)), "blue"),  # green-1 under another class
        ("flipped.png", png(photo("red", 999)), "green"),  # a red photo labelled green
        ("stranger.png", png(stranger()), "blue"),
    ]
    images_add(dataset=dataset, items=items)
    Image.objects.filter(dataset=dataset).update(split=Split.TRAIN)
    Image.objects.filter(dataset=dataset, original_name__in=["leak.png", "blue-3.png", "green-3.png"]).update(
        split=Split.TEST
    )
    return dataset


def named(dataset: Dataset, name: str) -> Image:
    return Image.objects.get(dataset=dataset, original_name=name)


def analysed(dataset: Dataset, **start: object) -> QualityRun:
    run = quality_start(dataset=dataset, enqueue=False, **start)  # type: ignore[arg-type]
    finished = quality_run(run_id=run.pk)
    assert finished is not None and finished.status == "succeeded", finished and finished.error
    return finished


def test_an_analysis_finds_the_planted_copies_the_label_error_and_the_stranger(planted):
    run = analysed(planted)
    assert run.backbone == "raw" and run.total == run.processed == 52 and run.skipped == 0 and run.reused == 0
    assert run.report["vectors"] == 52 and run.report["index"] == "exact"
    pk = {name: named(planted, name).pk for name in ("red-0.png", "leak.png", "green-1.png", "conflict.png")}
    assert sorted(run.report["groups"]) == sorted([[pk["red-0.png"], pk["leak.png"]],
                                                   [pk["green-1.png"], pk["conflict.png"]]])  # fmt: skip
    groups = duplicate_groups(run)
    assert [(g.leak, g.conflict) for g in groups] == [(True, False), (False, True)]  # the dangerous leak first
    flipped = named(planted, "flipped.png")
    assert flipped.label_issue_quality is not None and flipped.label_issue_suggestion == "red"
    assert named(planted, "conflict.png").label_issue_suggestion == "green"
    assert run.report["label_issues"] <= 4 and run.report["labels_checked"] == 52
    assert [i.original_name for i in Image.objects.filter(outlier_score__isnull=False)] == ["stranger.png"]
    shown = {i.original_name for i in workbench_images(dataset=planted, show="label_issue")}
    assert {"flipped.png", "conflict.png"} <= shown
    assert "flipped.png" in {i.original_name for i in workbench_images(dataset=planted, show="review")}
    assert [c["name"] for c in run.report["small_classes"]] == ["green", "red", "blue"]  # under 20 images each


def test_a_person_s_label_takes_an_image_out_of_the_review_queue(planted, admin_client):
    analysed(planted)
    flipped = named(planted, "flipped.png")
    response = admin_client.post(
        reverse("dataset-label", args=[planted.pk]),
        {"changes": [{"image": flipped.pk, "label": "red", "version": flipped.label_version}], "source": "review"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert flipped.pk not in {i.pk for i in workbench_images(dataset=planted, show="review")}


def test_keep_one_deletes_the_other_copies_and_move_puts_a_group_in_one_split(planted, admin_client):
    run = analysed(planted)
    leak, conflict = duplicate_groups(run)
    page = admin_client.get(reverse("quality:report", args=[planted.pk])).content.decode()
    assert 'data-split="test">1 test' in page and "label conflict: blue, green" in page
    response = admin_client.post(reverse("quality:move", args=[run.pk, leak.number]), {"split": "test"})
    assert response.status_code == 302
    assert set(Image.objects.filter(pk__in=[i.pk for i in leak.images]).values_list("split", flat=True)) == {"test"}
    keep = conflict.images[0].pk
    admin_client.post(reverse("quality:keep", args=[run.pk, conflict.number]), {"keep": keep})
    assert not Image.objects.filter(pk=conflict.images[1].pk).exists() and Image.objects.filter(pk=keep).exists()
    page = admin_client.get(reverse("quality:report", args=[planted.pk])).content.decode()
    assert 'data-split="test">2 test' in page and "label conflict" not in page
    assert [(g.leak, g.conflict) for g in duplicate_groups(run)] == [(False, False)]


def test_acting_on_a_group_that_is_not_there_is_refused(planted):
    run = analysed(planted)
    with pytest.raises(QualityRefused, match="no near-duplicate group 9"):
        duplicates_move(run=run, group=9, split="test")
    with pytest.raises(QualityRefused, match="is not in group 0"):
        duplicates_keep_one(run=run, group=0, keep=named(planted, "blue-5.png").pk)


def test_the_leak_s_effect_on_the_test_score(planted):
    run = analysed(planted)
    version = model_version_row(planted)
    tests = Image.objects.filter(dataset=planted, split=Split.TEST).order_by("pk")
    wrong = {i.pk: 0 for i in tests if i.original_name == "green-3.png"}  # green taken for blue
    synthetic_report(planted, version, wrong)
    effect = leak_effect(run, duplicate_groups(run))
    assert effect is not None and effect.removed == 1  # the leaked copy, answered right: it was trained on
    assert effect.accuracy == pytest.approx(2 / 3) and effect.accuracy_without == pytest.approx(1 / 2)


def test_more_like_this_opens_the_workbench_on_the_nearest_images(planted, admin_client):
    run = analysed(planted)
    red = named(planted, "red-0.png")
    found = similar_images(run, image_id=red.pk, k=5)
    assert found[0].image.original_name == "leak.png" and found[0].similarity > 0.9
    assert all(n.image.label and n.image.label.name == "red" for n in found[1:4])  # then photos of its class
    response = admin_client.get(reverse("quality:similar", args=[planted.pk, red.pk]))
    assert response.status_code == 302 and "images=" in response["Location"]
    page = admin_client.get(response["Location"]).content.decode()
    order = [int(part.split('"')[0]) for part in page.split('data-id="')[1:]]
    assert order[:2] == [red.pk, found[0].image.pk] and "wb-similar-note" in page


def test_more_like_this_from_an_uploaded_photo(planted, admin_client):
    """A recompressed copy of red-3, which the dataset never saw as such: its vector comes
    from the stored ONNX extractor in this (web) process, and red-3 is nearest."""
    run = analysed(planted)
    assert run.extractor_file.endswith(".onnx") and default_storage.exists(run.extractor_file)
    photo_of_red_3 = copy_of(photo("red", 203))
    found = similar_to_upload(run, data=photo_of_red_3, k=5)
    assert found[0].image == named(planted, "red-3.png") and found[0].similarity > 0.86
    assert {n.image.label.name for n in found[1:4]} == {"red"}
    upload = io.BytesIO(photo_of_red_3)
    upload.name = "mine.jpg"
    page = admin_client.post(reverse("quality:similar-upload", args=[planted.pk]), {"image": upload})
    workbench = reverse("datasets:workbench", args=[planted.pk])
    assert page.status_code == 302 and page["Location"].startswith(f"{workbench}?images={found[0].image.pk},")
    assert len(page["Location"].split(",")) == 24  # the page shows more than the five asked for here


def test_more_like_this_from_an_upload_refuses_what_it_cannot_search(planted, admin_client):
    run = analysed(planted)
    url = reverse("quality-run-similar-to-upload", args=[run.pk])
    not_an_image = io.BytesIO(b"%PDF-1.4 not a photo")
    not_an_image.name = "report.pdf"
    refused = admin_client.post(url, {"image": not_an_image})
    assert refused.status_code == 400 and "not an image" in refused.json()["image"], refused.json()
    assert admin_client.post(url, {}).status_code == 400  # no file at all
    page = admin_client.post(reverse("quality:similar-upload", args=[planted.pk]), {}, follow=True)
    assert "Choose an image." in page.content.decode()
    from django.conf import settings
    from django.test import override_settings

    from classifier_site.uploads import route_body_limit

    # The upload limit is the action's own: the run's other routes keep the general body limit.
    assert route_body_limit(url) == settings.PREDICT_MAX_UPLOAD_BYTES != settings.MAX_BODY_BYTES
    assert route_body_limit(reverse("quality-run-list")) == settings.MAX_BODY_BYTES
    with override_settings(PREDICT_MAX_UPLOAD_BYTES=1000, ANONYMOUS_MAX_BODY_BYTES=500):
        big = io.BytesIO(png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
        big.name = "big.png"
        assert admin_client.post(url, {"image": big}).status_code == 413
    QualityRun.objects.filter(pk=run.pk).update(extractor_file="", extractor_sha256="")  # as an older analysis
    upload = io.BytesIO(png(photo("red", 203)))
    upload.name = "red.png"
    refused = admin_client.post(url, {"image": upload})
    assert refused.status_code == 400 and "cannot search by an uploaded image" in refused.json()["image"]


def test_an_extractor_whose_answers_drift_is_not_kept(tmp_path, monkeypatch):
    """Wrong neighbours would look like right ones: a converted file that answers other
    vectors than Keras is deleted, and the analysis goes on without uploads."""
    import keras

    from trainer.ml import extractor

    model = keras.models.load_model(pixel_backbone_file(tmp_path / "pixels.keras"))
    features = keras.Model(model.input, model.get_layer("flat").output)
    samples = np.stack([photo(c, 1) for c in COLOURS])
    extractor.write_extractor(features, samples, tmp_path / "good.onnx")  # the real conversion agrees
    assert (tmp_path / "good.onnx").exists()
    monkeypatch.setattr(extractor, "extractor_load", lambda path: lambda pixels: np.random.rand(len(pixels), 3072))
    with pytest.raises(extractor.ExtractorDrifts, match="drift"):
        extractor.write_extractor(features, samples, tmp_path / "drifting.onnx")
    assert not (tmp_path / "drifting.onnx").exists()


def test_an_analysis_whose_extractor_will_not_convert_still_succeeds_without_uploads(planted, monkeypatch, caplog):
    def unconvertible(*args, **kwargs):
        raise RuntimeError("tf2onnx: no handler for op Foo")

    monkeypatch.setattr("trainer.ml.extractor.write_extractor", unconvertible)
    run = analysed(planted)
    assert run.index_file and run.extractor_file == "" and "no extractor for uploads" in caplog.text
    assert similar_images(run, image_id=named(planted, "red-0.png").pk)  # the image search stands
    with pytest.raises(VectorsUnavailable, match="cannot search by an uploaded image"):
        similar_to_upload(run, data=png(photo("red", 203)))


def test_damaged_or_missing_vectors_say_so(planted):
    from trainer.quality.vectors import _loaded_index

    _loaded_index.cache_clear()  # an earlier test's index of the same content stays loaded otherwise, as it should
    run = analysed(planted)
    with default_storage.open(run.index_file, "wb") as fh:
        fh.write(b"not the vectors")
    with pytest.raises(VectorsUnavailable, match="damaged"):
        similar_images(run, image_id=named(planted, "red-0.png").pk)
    run.index_file = ""
    with pytest.raises(VectorsUnavailable, match="stored no vectors"):
        similar_images(run, image_id=1)


def test_an_unreadable_file_is_skipped_and_counted(planted):
    broken = named(planted, "blue-7.png")
    with default_storage.open(broken.file.name, "wb") as fh:
        fh.write(b"\x89PNG but not really")
    run = analysed(planted)
    assert run.skipped == 1 and run.report["vectors"] == 51


def test_no_backbone_installed_refuses_with_how_to_install_one(colour_dataset):
    with pytest.raises(QualityRefused, match="fetch_weights"):
        quality_start(dataset=colour_dataset, enqueue=False)
    with pytest.raises(QualityRefused, match="no backbone named 'nope'"):
        quality_start(dataset=colour_dataset, backbone="nope", enqueue=False)


def test_one_analysis_at_a_time_and_a_duplicate_delivery_does_nothing(planted):
    run = quality_start(dataset=planted, enqueue=False)
    with pytest.raises(QualityRefused, match="already being analysed"):
        quality_start(dataset=planted, enqueue=False)
    quality_run(run_id=run.pk)
    again = quality_run(run_id=run.pk)
    assert again is not None and again.status == "succeeded" and again.finished_at is not None


def test_the_features_of_a_transfer_learning_job_are_reused(planted):
    train_now(planted, arch="raw", image_size=32, epochs=1, fine_tune_epochs=0, batch_size=16)
    run = analysed(planted)
    assert run.reused == run.processed == 52  # every image was in the job's snapshot: no backbone call
    assert len(run.report["groups"]) == 2 and run.report["vectors"] == 52


def test_the_api_starts_follows_and_acts_on_an_analysis(planted, admin_client, member_client):
    url = reverse("quality-run-list")
    assert member_client.post(url, {"dataset": planted.pk}).status_code == 403
    refused = admin_client.post(url, {"dataset": planted.pk, "backbone": "nope"})
    assert refused.status_code == 400 and "no backbone named" in refused.json()["detail"]
    started = admin_client.post(url, {"dataset": planted.pk})
    assert started.status_code == 201 and started.json()["status"] == "queued"
    run_id = started.json()["id"]
    quality_run(run_id=run_id)
    body = admin_client.get(reverse("quality-run-detail", args=[run_id])).json()
    assert body["status"] == "succeeded" and [g["leak"] for g in body["groups"]] == [True, False]
    red = named(planted, "red-0.png").pk
    similar = admin_client.get(reverse("quality-run-similar", args=[run_id]), {"image": red, "k": 3}).json()
    leak = named(planted, "leak.png").pk
    assert similar["results"][0]["id"] == leak and len(similar["results"]) == 3
    assert similar["results"][0]["thumbnail"] == f"/datasets/images/{leak}/thumbnail/"  # through the permission check
    assert admin_client.get(reverse("quality-run-similar", args=[run_id]), {"image": "x"}).status_code == 400
    assert admin_client.get(reverse("quality-run-similar", args=[run_id]), {"image": 10**6}).status_code == 400
    group = body["groups"][1]
    kept = admin_client.post(reverse("quality-run-keep", args=[run_id, group["number"]]),
                             {"image": group["images"][0]["id"]}, content_type="application/json")  # fmt: skip
    assert kept.status_code == 200 and kept.json() == {"deleted": 1}
    moved = admin_client.post(reverse("quality-run-move", args=[run_id, body["groups"][0]["number"]]), {"split": "val"},
                              content_type="application/json")  # fmt: skip
    assert moved.json() == {"moved": 2}
    bad = admin_client.post(reverse("quality-run-move", args=[run_id, 0]), {"split": "nowhere"},
                            content_type="application/json")  # fmt: skip
    assert bad.status_code == 400


def test_the_command_analyses_and_prints_the_findings(planted, capsys):
    import json

    from django.core.management import CommandError, call_command

    call_command("data_quality", "planted", "--inline", "--json")
    found = json.loads(capsys.readouterr().out)
    assert found["status"] == "succeeded" and found["images"] == 52 and found["backbone"] == "raw"
    assert (found["near_duplicate_groups"], found["leaks"], found["label_conflicts"], found["outliers"]) == (2, 1, 1, 1)
    with pytest.raises(CommandError, match="no dataset named or numbered 'nope'"):
        call_command("data_quality", "nope", "--inline")
    with pytest.raises(CommandError, match="no backbone named 'absent'"):
        call_command("data_quality", "planted", "--backbone", "absent", "--inline")


def test_storage_holds_the_newest_analysis_s_vectors_only_and_verify_storage_agrees(
    planted, django_capture_on_commit_callbacks
):
    from django.core.management import call_command

    with django_capture_on_commit_callbacks(execute=True):
        first = analysed(planted)
        images_delete(dataset=planted, ids=[named(planted, "blue-9.png").pk])  # other vectors: another file
        second = analysed(planted)
    first.refresh_from_db()
    assert first.index_file == first.extractor_file == "" and second.index_file and second.extractor_file
    kept = sorted(name.rsplit("/", 1)[1] for name in (second.index_file, second.extractor_file))
    assert sorted(default_storage.listdir(f"quality/dataset-{planted.pk}")[1]) == kept
    call_command("verify_storage", "--grace-minutes", "0")  # raises CommandError on a missing, damaged or orphan file


@pytest.mark.worker
def test_an_analysis_runs_on_a_real_worker_process(celery_worker_process, admin_client, tmp_path):
    """As `make run` runs it: queued from the API, analysed by a `celery worker` (whose pool
    process is a daemon: the libraries must not start processes of their own)."""
    import time

    from trainer.ml.weights import install_file

    install_file(path=pixel_backbone_file(tmp_path / "pixels.keras"), name="raw", feature_layer="flat", image_size=32,
                 builtin_preprocessing=True, title="Pixels")  # fmt: skip
    dataset = plant()
    started = admin_client.post(reverse("quality-run-list"), {"dataset": dataset.pk})
    assert started.status_code == 201, started.content
    run = QualityRun.objects.get(pk=started.json()["id"])
    deadline = time.monotonic() + 120
    while not run.is_finished and time.monotonic() < deadline:
        time.sleep(0.5)
        run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert len(run.report["groups"]) == 2 and run.report["label_issues"] >= 1
    assert named(dataset, "flipped.png").label_issue_suggestion == "red"
