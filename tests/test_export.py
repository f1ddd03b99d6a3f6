"""Model exports: every format answers like the Keras model it came from (run in
onnxruntime, LiteRT and TensorFlow), the export's status flow, the command, the
API and the pages."""

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from classifier_site.runs import RunStatus
from tests.conftest import model_version_row
from tests.images import COLOURS
from trainer.models import ModelExport, ModelVersion
from trainer.registry.exports import ExportRefused, model_export_request, model_export_run

FORMATS = ["keras", "savedmodel", "tflite", "onnx"]
# Float32 softmax from four runtimes: they differ by about 1e-7 (see the report).
TOLERANCE = 1e-5


# --- running an exported file ------------------------------------------------------


def sample_images(size: int, count: int = 8) -> np.ndarray:
    """Noisy squares of each colour the models learn, and pure noise: confident and unsure answers."""
    rng = np.random.default_rng(7)
    colours = np.array(list(COLOURS.values()) * count)[:count, None, None, :]
    squares = colours + rng.integers(-25, 26, size=(count, size, size, 3))
    squares[count // 2 :] = rng.integers(0, 256, size=(count - count // 2, size, size, 3))
    return np.clip(squares, 0, 255).astype(np.uint8)


def keras_answers(path: Path, images: np.ndarray) -> np.ndarray:
    from trainer.ml.export import load_model

    return np.asarray(load_model(path)(images, training=False))


def run_savedmodel(path: Path, images: np.ndarray, tmp_path: Path) -> np.ndarray:
    import tensorflow as tf

    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path / "unzipped")
    loaded = tf.saved_model.load(str(tmp_path / "unzipped" / "saved_model"))
    by_signature = loaded.signatures["serving_default"](image=tf.constant(images))["probabilities"]
    by_function = loaded.serve(tf.constant(images))["probabilities"]
    np.testing.assert_array_equal(by_signature, by_function)
    return np.asarray(by_signature)


def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    return np.asarray(interpreter.get_signature_runner()(image=images)["probabilities"])


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("image", "tensor(uint8)")]
    return np.asarray(session.run(["probabilities"], {"image": images})[0])


def run_export(fmt: str, path: Path, images: np.ndarray, tmp_path: Path) -> np.ndarray:
    if fmt == "keras":
        return keras_answers(path, images)
    if fmt == "savedmodel":
        return run_savedmodel(path, images, tmp_path)
    return run_tflite(path, images) if fmt == "tflite" else run_onnx(path, images)


def assert_same_answers(fmt: str, exported: np.ndarray, expected: np.ndarray) -> None:
    difference = float(np.abs(exported - expected).max())
    print(f"{fmt}: max abs difference {difference:.3g}")  # shown with -s
    assert exported.shape == expected.shape and exported.dtype == np.float32
    assert difference < TOLERANCE, f"{fmt}: max abs difference {difference}"
    np.testing.assert_array_equal(exported.argmax(axis=1), expected.argmax(axis=1))


# --- the converters alone: a flip-TTA resnet with augmentation layers ----------------


@pytest.fixture(scope="module")
def tta_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default architecture's shape (normalization constants, random augmentation
    layers, flip TTA wrapping a nested model, the custom Mirror layer), trained a
    little so that its answers are not all a third. Both things Keras' own
    `model.export()` gets wrong live here: see trainer.ml.export."""
    import keras

    from trainer.ml.architectures import PixelStats, build_resnet, with_flip_tta
    from trainer.ml.config import TrainConfig

    config = TrainConfig.from_dict(
        {"arch": "resnet", "size": "small", "image_size": 24, "flip": True, "translate": 0.1}
    )
    images = sample_images(24, 60)[:30]
    labels = np.arange(30) % 3
    model = build_resnet(config, 3, PixelStats.of(images))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=3, batch_size=10, verbose=0)
    path = tmp_path_factory.mktemp("tta") / "model.keras"
    with_flip_tta(model).save(path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_answers_like_keras(tta_model_file, fmt, tmp_path):
    from trainer.ml.export import export_file

    out = tmp_path / f"model.{fmt}"
    export_file(tta_model_file, fmt, out)
    images = sample_images(24)
    assert_same_answers(fmt, run_export(fmt, out, images, tmp_path), keras_answers(tta_model_file, images))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_an_unknown_format_is_refused_and_a_failed_write_leaves_no_file(tta_model_file, tmp_path):
    from trainer.ml.export import ExportError, atomic_output, export_file

    with pytest.raises(ExportError, match="Unknown export format 'pickle'"):
        export_file(tta_model_file, "pickle", tmp_path / "model.pickle")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "model.onnx") as partial:
        partial.write_bytes(b"half a file")
        raise RuntimeError("the converter died")
    assert list(tmp_path.iterdir()) == []


# --- the service: request, run on a worker, store ----------------------------------


def _stored_path(export: ModelExport, tmp_path: Path, fmt: str) -> Path:
    """A local copy of the stored file (storage may be remote), named as downloads are."""
    local = tmp_path / f"download.{fmt}"
    with default_storage.open(export.file.name) as stored:
        local.write_bytes(stored.read())
    return local


@pytest.mark.django_db
def test_every_export_of_a_trained_version_answers_like_keras(
    trained_version, tmp_path, django_capture_on_commit_callbacks
):
    from trainer.ml.files import sha256_file
    from trainer.registry.files import local_model_file

    images = sample_images(trained_version.image_size)
    expected = keras_answers(local_model_file(trained_version), images)
    for fmt in FORMATS:
        with django_capture_on_commit_callbacks() as queued:
            export = model_export_request(version=trained_version, format=fmt)
        if fmt != "keras":  # converted by a worker; the task runs here instead
            assert export.status == RunStatus.QUEUED and len(queued) == 1
            export = model_export_run(export_id=export.pk)
        assert export.status == RunStatus.SUCCEEDED, export.error
        local = _stored_path(export, tmp_path, fmt)
        assert export.sha256 == sha256_file(local) and export.file_size == local.stat().st_size
        assert_same_answers(fmt, run_export(fmt, local, images, tmp_path), expected)
    stored = {e.format: e.file.name for e in trained_version.exports.all()}
    assert stored["keras"] == trained_version.file.name  # no copy: the version's own file
    assert all(stored[f].startswith(f"exports/version-{trained_version.pk}/") for f in FORMATS[1:])


@pytest.mark.django_db
def test_requests_are_idempotent_and_a_duplicate_delivery_converts_nothing(
    colour_dataset, django_capture_on_commit_callbacks
):
    version = model_version_row(colour_dataset)
    with django_capture_on_commit_callbacks() as first:
        export = model_export_request(version=version, format="onnx")
    with django_capture_on_commit_callbacks() as again:  # still queued: sent again, same row
        assert model_export_request(version=version, format="onnx").pk == export.pk
    assert len(first) == len(again) == 1 and ModelExport.objects.count() == 1
    ModelExport.objects.filter(pk=export.pk).update(status=RunStatus.RUNNING)
    with django_capture_on_commit_callbacks() as while_running:
        assert model_export_request(version=version, format="onnx").status == RunStatus.RUNNING
    assert model_export_run(export_id=export.pk).status == RunStatus.RUNNING  # not claimed twice
    assert while_running == []
    assert model_export_run(export_id=10**6) is None
    with pytest.raises(ExportRefused, match="Unknown export format 'pickle'"):
        model_export_request(version=version, format="pickle")


@pytest.mark.django_db
def test_a_damaged_model_file_fails_the_export_with_a_message_and_it_can_be_retried(
    colour_dataset, django_capture_on_commit_callbacks
):
    version = model_version_row(colour_dataset)
    default_storage.save(version.file.name, ContentFile(b"half a model"))
    export = model_export_run(export_id=model_export_request(version=version, format="tflite").pk)
    assert export.status == RunStatus.FAILED and export.finished_at is not None
    assert export.error == f"Model file of version {version.pk} is damaged (checksum mismatch)."
    assert not export.file
    with django_capture_on_commit_callbacks() as queued:
        retried = model_export_request(version=version, format="tflite")
    assert retried.status == RunStatus.QUEUED and retried.error == "" and len(queued) == 1


@pytest.mark.django_db
def test_a_broker_that_is_down_fails_the_export_with_a_message(
    colour_dataset, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(
        "classifier_site.runs.publish", lambda task, *args: "Could not reach the task broker: is it running?"
    )
    version = model_version_row(colour_dataset)
    with django_capture_on_commit_callbacks(execute=True):
        export = model_export_request(version=version, format="savedmodel")
    export.refresh_from_db()
    assert export.status == RunStatus.FAILED and "task broker" in export.error


def test_exports_go_to_the_default_queue_not_the_gpu_one():
    from classifier_site.celery import app

    assert app.amqp.router.route({}, "trainer.tasks.export_model")["queue"].name == "default"
    assert app.amqp.router.route({}, "trainer.tasks.train_job")["queue"].name == "gpu"


@pytest.mark.worker
def test_a_worker_converts_a_requested_export(celery_worker_process, trained_version):
    from django.db import transaction

    with transaction.atomic():
        export = model_export_request(version=trained_version, format="onnx")
    deadline = time.monotonic() + 120
    while export.status in (RunStatus.QUEUED, RunStatus.RUNNING) and time.monotonic() < deadline:
        time.sleep(0.5)
        export.refresh_from_db()
    assert export.status == RunStatus.SUCCEEDED, export.error or celery_worker_process.log_path.read_text()[-3000:]
    assert default_storage.exists(export.file.name)


# --- the command ---------------------------------------------------------------------


@pytest.mark.django_db
def test_export_command_writes_a_file_that_answers_like_keras(trained_version, tmp_path):
    from trainer.registry.files import local_model_file

    out = io.StringIO()
    call_command("export_model", str(trained_version.pk), "--format", "onnx", "--output", str(tmp_path / "m.onnx"),
                 "--json", stdout=out)  # fmt: skip
    summary = json.loads(out.getvalue())
    path = Path(summary["path"])
    assert path == tmp_path / "m.onnx" and summary["size"] == path.stat().st_size and len(summary["sha256"]) == 64
    images = sample_images(trained_version.image_size)
    assert_same_answers("onnx", run_onnx(path, images), keras_answers(local_model_file(trained_version), images))
    assert not ModelExport.objects.exists()  # the command records nothing


@pytest.mark.django_db
def test_export_command_names_the_file_after_the_version_by_default(colour_dataset, tmp_path, monkeypatch):
    version = model_version_row(colour_dataset)
    default_storage.save(version.file.name, ContentFile(b"a keras file"))
    ModelVersion.objects.filter(pk=version.pk).update(sha256=hashlib.sha256(b"a keras file").hexdigest())
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    call_command("export_model", str(version.pk), "--format", "keras", stdout=out)
    written = tmp_path / f"model-v{version.pk}.keras"
    assert written.read_bytes() == b"a keras file"
    assert out.getvalue().splitlines() == [
        str(written),
        f"12 bytes, SHA-256 {hashlib.sha256(b'a keras file').hexdigest()}",
    ]


@pytest.mark.django_db
def test_export_command_errors_are_clear(colour_dataset):
    with pytest.raises(CommandError, match="no model version 999"):
        call_command("export_model", "999", "--format", "onnx")
    version = model_version_row(colour_dataset)
    with pytest.raises(CommandError, match="invalid choice: 'pickle'"):
        call_command("export_model", str(version.pk), "--format", "pickle")
    with pytest.raises(CommandError, match=f"Model file of version {version.pk} is missing"):
        call_command("export_model", str(version.pk), "--format", "onnx")


# --- API and pages (no conversion: a worker's success is written directly) ---------


def finish(export: ModelExport, content: bytes = b"onnx bytes") -> ModelExport:
    """What a worker leaves behind: the stored file and a succeeded row."""
    name = default_storage.save(f"exports/version-{export.model_version_id}/x.{export.format}", ContentFile(content))
    ModelExport.objects.filter(pk=export.pk).update(
        status=RunStatus.SUCCEEDED, file=name, sha256="a" * 64, file_size=len(content)
    )
    export.refresh_from_db()
    return export


@pytest.fixture
def version(colour_dataset) -> ModelVersion:
    return model_version_row(colour_dataset)


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.mark.django_db
def test_api_admin_requests_lists_and_downloads_an_export(api, admin_user, version):
    api.force_authenticate(admin_user)
    url = f"/api/v1/models/{version.pk}/exports/"
    assert api.get(url).json() == []
    asked = api.post(url, {"format": "onnx"}, format="json")
    assert asked.status_code == 202
    assert asked.json()["format"] == "onnx" and asked.json()["status"] == "queued"
    assert asked.json()["download_url"] is None
    download = f"{url}onnx/download/"
    assert api.get(download).status_code == 404  # not ready yet
    finish(ModelExport.objects.get(), b"the onnx file")
    listed = api.get(url).json()
    assert [(e["format"], e["status"], e["file_size"]) for e in listed] == [("onnx", "succeeded", 13)]
    assert listed[0]["download_url"] == f"http://testserver{download}"
    response = api.get(download)
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"the onnx file"
    assert response["Content-Disposition"] == f'attachment; filename="model-v{version.pk}.onnx"'


@pytest.mark.django_db
def test_api_keras_export_is_ready_at_once(api, admin_user, version):
    default_storage.save(version.file.name, ContentFile(b"keras zip"))
    api.force_authenticate(admin_user)
    body = api.post(f"/api/v1/models/{version.pk}/exports/", {"format": "keras"}, format="json").json()
    assert body["status"] == "succeeded" and body["sha256"] == version.sha256 and body["file_size"] == 9
    response = api.get(body["download_url"])
    assert b"".join(response.streaming_content) == b"keras zip"
    assert f'filename="model-v{version.pk}.keras"' in response["Content-Disposition"]


@pytest.mark.django_db
def test_api_refuses_unknown_formats(api, admin_user, version):
    api.force_authenticate(admin_user)
    bad = api.post(f"/api/v1/models/{version.pk}/exports/", {"format": "pickle"}, format="json")
    assert bad.status_code == 400 and "not a valid choice" in bad.json()["format"][0]
    assert api.post(f"/api/v1/models/{version.pk}/exports/", {}, format="json").status_code == 400
    assert api.get(f"/api/v1/models/{version.pk}/exports/pickle/download/").status_code == 404
    assert api.get(f"/api/v1/models/{version.pk + 1}/exports/").status_code == 404
    assert not ModelExport.objects.exists()


@pytest.mark.django_db
def test_api_exports_are_for_admins_only(api, member, version):
    export = finish(ModelExport.objects.create(model_version=version, format="onnx"))
    urls = [f"/api/v1/models/{version.pk}/exports/", f"/api/v1/models/{version.pk}/exports/onnx/download/"]
    for url in urls:
        assert api.get(url).status_code == 401
    api.force_authenticate(member)
    for url in urls:
        assert api.get(url).status_code == 403
    assert api.post(urls[0], {"format": "tflite"}, format="json").status_code == 403
    assert list(ModelExport.objects.all()) == [export]


@pytest.mark.django_db
def test_page_lists_every_format_and_queues_one_with_htmx(admin_client, version):
    url = f"/models/{version.pk}/exports/"
    page = admin_client.get(url).content.decode()
    assert page.count("Prepare") == 4 and "every 2s" not in page
    response = admin_client.post(url, {"format": "tflite"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    partial = response.content.decode()
    assert 'data-status="queued"' in partial and "Waiting for a worker" in partial
    assert 'hx-trigger="every 2s"' in partial and partial.count("Prepare") == 3
    assert ModelExport.objects.get().format == "tflite"


@pytest.mark.django_db
def test_page_without_htmx_redirects_and_refuses_unknown_formats(admin_client, version):
    url = f"/models/{version.pk}/exports/"
    response = admin_client.post(url, {"format": "onnx"})
    assert response.status_code == 302 and response["Location"] == f"/models/{version.pk}/#exports"
    refused = admin_client.post(url, {"format": "pickle"}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 400 and "Unknown export format" in refused.content.decode()
    assert [e.format for e in ModelExport.objects.all()] == ["onnx"]


@pytest.mark.django_db
def test_page_download_once_ready_and_a_failure_offers_a_retry(admin_client, version):
    download = f"/models/{version.pk}/exports/savedmodel/download"
    export = ModelExport.objects.create(model_version=version, format="savedmodel")
    assert admin_client.get(download).status_code == 404
    finish(export, b"zip bytes")
    page = admin_client.get(f"/models/{version.pk}/exports/").content.decode()
    assert download in page and "9\xa0bytes" in page
    response = admin_client.get(download)
    assert b"".join(response.streaming_content) == b"zip bytes"
    assert response["Content-Disposition"] == f'attachment; filename="model-v{version.pk}-savedmodel.zip"'
    ModelExport.objects.create(model_version=version, format="onnx", status="failed", error="ONNX conversion failed: X")
    page = admin_client.get(f"/models/{version.pk}/exports/").content.decode()
    assert "ONNX conversion failed: X" in page and "Try again" in page
    assert admin_client.get(f"/models/{version.pk}/exports/pickle/download").status_code == 404


@pytest.mark.django_db
def test_export_pages_are_for_admins_only(client, member_client, version):
    finish(ModelExport.objects.create(model_version=version, format="onnx"))
    for c in (client, member_client):
        assert c.get(f"/models/{version.pk}/exports/").status_code == 302  # to the admin login
        assert c.post(f"/models/{version.pk}/exports/", {"format": "tflite"}).status_code == 302
        assert c.get(f"/models/{version.pk}/exports/onnx/download").status_code == 302
    assert ModelExport.objects.count() == 1


@pytest.mark.django_db
def test_model_page_loads_its_export_table(admin_client, version):
    page = admin_client.get(f"/models/{version.pk}/").content.decode()
    assert f'hx-get="/models/{version.pk}/exports/"' in page and 'hx-trigger="load"' in page


def test_a_tflite_conversion_failure_names_the_missing_ops():
    from trainer.ml.export import _unsupported_tflite_ops

    message = (
        "Could not translate MLIR to FlatBuffer.<unknown>:0: error: loc(...): 'tf.ImageProjectiveTransformV3' op is "
        "neither a custom op nor a flex op\n<unknown>:0: error: 'tf.StatelessRandomUniformV2' op is neither a custom "
        "op nor a flex op\n'tf.StatelessRandomUniformV2' op is neither a custom op nor a flex op"
    )
    expected = "LiteRT has no built-in kernel for ImageProjectiveTransformV3, StatelessRandomUniformV2."
    assert _unsupported_tflite_ops(message) == expected


@pytest.mark.django_db
def test_an_export_whose_worker_died_can_be_asked_for_again(colour_dataset):
    from datetime import timedelta

    from django.utils import timezone

    from classifier_site.runs import RunStatus
    from tests.conftest import model_version_row
    from trainer.models import ModelExport
    from trainer.registry.exports import model_export_request

    version = model_version_row(colour_dataset)
    running = ModelExport.objects.create(model_version=version, format="onnx", status=RunStatus.RUNNING,
                                         started_at=timezone.now() - timedelta(minutes=5))  # fmt: skip
    assert model_export_request(version=version, format="onnx").status == RunStatus.RUNNING  # still working
    ModelExport.objects.filter(pk=running.pk).update(started_at=timezone.now() - timedelta(hours=1))
    again = model_export_request(version=version, format="onnx")
    assert again.status == RunStatus.QUEUED and again.started_at is None
