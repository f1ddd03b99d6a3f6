"""The photo recipe: what `auto` picks, the feature cache, the head, the kept-or-
discarded fine-tune, and models built on an installed backbone file.

Most tests use a tiny `.keras` backbone built here (a conv and a pooling layer),
installed the way an operator installs their own, so they take seconds; the
shared EfficientNet-Lite0 file is used where the real thing matters."""

from pathlib import Path

import numpy as np
import pytest

from tests.test_ml import SHARED_WEIGHTS, Recorder
from trainer.ml.backbones import CATALOGUE, Backbone
from trainer.ml.config import TrainConfig
from trainer.ml.recipe import DataStats, choose, strongest

PHOTOS = DataStats(images=1271, classes=10, median_per_class=127, median_side=197)
CIFAR = DataStats(images=60000, classes=10, median_per_class=6000, median_side=32)
DIGITS = DataStats(images=1797, classes=10, median_per_class=180, median_side=32, greyscale=True)
SMALL_FEW = DataStats(images=3000, classes=10, median_per_class=300, median_side=32)
INSTALLED = [CATALOGUE["mobilenetv2"], CATALOGUE["efficientnet_lite0"], CATALOGUE["mobilenet"]]


# --- the auto decision (no TensorFlow) ----------------------------------------------------------


def test_auto_is_the_default_recipe():
    assert TrainConfig().arch == "auto" and TrainConfig.from_dict({}).arch == "auto"


def test_auto_picks_the_strongest_installed_backbone_for_photos():
    recipe = choose(TrainConfig(), PHOTOS, on_gpu=False, installed=INSTALLED)
    assert recipe.config.arch == "efficientnet_lite0" and recipe.config.image_size == 224
    assert recipe.config.fine_tune_epochs == 0  # a CPU: frozen features only
    assert recipe.reason == (
        "EfficientNet-Lite0 at 224 px, frozen features + trained head: "
        "photos (median side 197 px), 1,271 images, 10 classes"
    )


def test_auto_fine_tunes_on_a_gpu_and_says_so():
    recipe = choose(TrainConfig(), PHOTOS, on_gpu=True, installed=INSTALLED)
    assert recipe.config.fine_tune_epochs > 0 and "fine-tuning if it validates better" in recipe.reason


def test_auto_trains_small_images_with_enough_of_them_from_scratch():
    recipe = choose(TrainConfig(), CIFAR, on_gpu=False, installed=INSTALLED)
    assert recipe.config == TrainConfig.defaults("resnet")  # the same run as asking for resnet
    assert recipe.reason.startswith("resnet from scratch at 32 px: small images (median side 32 px), 60,000 images")


def test_auto_trains_small_greyscale_glyphs_from_scratch_and_few_colour_images_on_features():
    assert choose(TrainConfig(), DIGITS, on_gpu=False, installed=INSTALLED).config.arch == "resnet"
    few = choose(TrainConfig(), SMALL_FEW, on_gpu=False, installed=INSTALLED)
    assert few.config.arch == "efficientnet_lite0" and few.config.image_size == 224


def test_auto_without_a_backbone_trains_from_scratch_and_says_how_to_install_one():
    recipe = choose(TrainConfig(), PHOTOS, on_gpu=False, installed=[])
    assert recipe.config.arch == "resnet"
    assert "no pretrained backbone is installed" in recipe.reason and "fetch_weights" in recipe.reason


def test_auto_on_a_cpu_skips_a_backbone_too_slow_for_the_dataset():
    slow = Backbone(name="huge", title="Huge", image_size=224, preprocessing="builtin", feature_dim=8, top1=90.0,
                    ms_per_image=500.0, feature_layer="pool")  # fmt: skip
    assert strongest([slow, *INSTALLED], PHOTOS.images, on_gpu=False).name == "efficientnet_lite0"
    assert strongest([slow, *INSTALLED], PHOTOS.images, on_gpu=True).name == "huge"


def test_fields_changed_from_autos_defaults_carry_over_to_the_chosen_recipe():
    recipe = choose(TrainConfig.from_dict({"seed": 7, "label_smoothing": 0.0}), PHOTOS, on_gpu=False,
                    installed=INSTALLED)  # fmt: skip
    assert recipe.config.seed == 7 and recipe.config.label_smoothing == 0.0
    assert recipe.config.epochs == TrainConfig.defaults("efficientnet_lite0").epochs


# --- a tiny installed backbone ------------------------------------------------------------------


def tiny_backbone_file(path: Path, seed: int = 0) -> Path:
    """A `.keras` backbone as an operator would bring one: float 0-255 pixels in,
    preprocessing built in, a named pooled feature layer."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(None, None, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Conv2D(12, 3, activation="relu", name="conv2")(x)
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(5, name="imagenet_head")(features)
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


@pytest.fixture
def tiny(keras_home: Path, tmp_path: Path) -> Backbone:
    from trainer.ml.weights import install_file

    file = tiny_backbone_file(tmp_path / "tiny.keras")
    return install_file(path=file, name="tiny", feature_layer="pool", image_size=32, builtin_preprocessing=True,
                        title="Tiny").backbone  # fmt: skip


def _colour_data(size: int = 32, per_class: int = 24):
    from trainer.ml.train import Split, TrainData

    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])

    def split(n: int) -> Split:
        y = np.repeat(np.arange(3), n)
        x = np.clip(colours[y][:, None, None, :] + rng.integers(-40, 40, (len(y), size, size, 3)), 0, 255)
        return Split(x.astype(np.uint8), y, ids=np.arange(len(y)) + 1000 * n)

    return TrainData(["red", "green", "blue"], split(per_class), split(8), split(8))


def test_an_installed_backbone_file_is_catalogued_with_its_hash(tiny):
    from trainer.ml import backbones

    assert backbones.known()["tiny"].feature_dim == 12 and len(backbones.known()["tiny"].sha256) == 64
    assert "tiny" in [b.name for b in backbones.installed()]
    assert TrainConfig.defaults("tiny").image_size == 32  # configs may name it now


def test_features_are_computed_once_then_reused_and_recomputed_when_the_images_change(tiny, tmp_path):
    from trainer.ml.backbones import feature_extractor
    from trainer.ml.features import cached_or_computed

    data = _colour_data()
    images = {s: getattr(data, s).x for s in ("train", "val", "test")}
    ids = {s: getattr(data, s).ids for s in ("train", "val", "test")}
    built: list[int] = []

    def extractor():
        built.append(1)
        return feature_extractor(tiny, 32)

    progress: list[tuple[int, int]] = []
    first = cached_or_computed(tmp_path / "f", extractor, images, ids, progress=lambda d, t: progress.append((d, t)))
    assert not first.reused and first.train.shape == (1, 72, 12) and progress[-1] == (120, 120)
    again = cached_or_computed(tmp_path / "f", extractor, images, ids)
    assert again.reused and len(built) == 1 and np.array_equal(again.test, first.test)
    mirrored = cached_or_computed(tmp_path / "f", extractor, images, ids, views=2)  # a view more: recomputed
    assert not mirrored.reused and mirrored.train.shape == (2, 72, 12) and len(built) == 2
    other_ids = {**ids, "test": ids["test"] + 1}  # other images under the same name: recomputed
    assert not cached_or_computed(tmp_path / "f", extractor, images, other_ids).reused


def test_the_head_trains_on_features_and_the_served_model_gives_the_reports_numbers(tiny, tmp_path):
    from trainer.ml.export import load_model
    from trainer.ml.train import MODEL_FILE, predict, train

    config = TrainConfig.from_dict({"arch": "tiny", "epochs": 60}).resolve(on_gpu=False, class_counts=[24] * 3)
    recorder = Recorder()
    result = train(config, _colour_data(), tmp_path / "out", recorder)
    assert result.metrics["accuracy"] >= 0.9 and result.metrics["transfer"]["kept"] == "frozen head"
    assert result.metrics["transfer"]["fine_tuned_val_accuracy"] is None
    assert 1 <= len(result.history["loss"]) <= 60 and ("head", 0, 60) in recorder.phases
    model = load_model(tmp_path / "out" / MODEL_FILE)  # safe_mode: one plain Keras file
    served = predict(model, _colour_data().test, 3, 16)
    assert np.abs(served - result.probabilities).max() < 1e-4


def test_fine_tuning_is_discarded_when_it_validates_worse(tiny, tmp_path):
    from trainer.ml.export import load_model
    from trainer.ml.train import MODEL_FILE, predict, train

    # A rate this high wrecks the backbone: validation must say so and the frozen head stays.
    config = TrainConfig.from_dict({"arch": "tiny", "epochs": 20, "fine_tune_epochs": 2, "fine_tune_learning_rate": 5.0,
                                    "batch_size": 16}).resolve(on_gpu=False, class_counts=[24] * 3)  # fmt: skip
    result = train(config, _colour_data(), tmp_path / "out", Recorder())
    transfer = result.metrics["transfer"]
    assert transfer["kept"] == "frozen head" and transfer["fine_tuned_val_accuracy"] < transfer["head_val_accuracy"]
    served = predict(load_model(tmp_path / "out" / MODEL_FILE), _colour_data().test, 3, 16)
    assert np.abs(served - result.probabilities).max() < 1e-4  # the frozen head's weights, whole


def test_fine_tuning_is_kept_when_it_validates_better(tiny, tmp_path, monkeypatch):
    from trainer.ml import transfer as transfer_module
    from trainer.ml.export import load_model
    from trainer.ml.train import MODEL_FILE, predict, train

    # A frozen head that is poor on validation, so that fine-tuning at a sane rate beats it.
    monkeypatch.setattr(transfer_module, "_accuracy", lambda *args: 0.0)
    config = TrainConfig.from_dict({"arch": "tiny", "epochs": 5, "fine_tune_epochs": 2, "fine_tune_learning_rate": 1e-3,
                                    "batch_size": 16}).resolve(on_gpu=False, class_counts=[24] * 3)  # fmt: skip
    recorder = Recorder()
    result = train(config, _colour_data(), tmp_path / "out", recorder)
    assert result.metrics["transfer"]["kept"] == "fine-tuned" and ("fine-tuning", 0, 2) in recorder.phases
    assert len(result.history["loss"]) >= 6  # five head epochs, then fine-tuning's
    served = predict(load_model(tmp_path / "out" / MODEL_FILE), _colour_data().test, 3, 16)
    assert np.abs(served - result.probabilities).max() < 1e-4  # the report is the tuned model's


def _export_matches_keras(model_path: Path, out: Path, images: np.ndarray, *, onnx: bool = True) -> None:
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    from trainer.ml.export import export_file, load_model

    expected = np.asarray(load_model(model_path)(images, training=False))
    if onnx:
        export_file(model_path, "onnx", out / "m.onnx")
        onnx_out = onnxruntime.InferenceSession(str(out / "m.onnx")).run(None, {"image": images})[0]
        assert np.abs(onnx_out - expected).max() < 1e-5
    export_file(model_path, "tflite", out / "m.tflite")
    interpreter = Interpreter(model_path=str(out / "m.tflite"))
    runner = interpreter.get_signature_runner()
    assert np.abs(runner(image=images)["probabilities"] - expected).max() < 1e-5


def test_a_model_on_an_installed_backbone_exports_with_the_same_answers(tiny, tmp_path):
    from trainer.ml.train import MODEL_FILE, train

    config = TrainConfig.from_dict({"arch": "tiny", "epochs": 5}).resolve(on_gpu=False, class_counts=[24] * 3)
    train(config, _colour_data(), tmp_path / "out", None)
    _export_matches_keras(tmp_path / "out" / MODEL_FILE, tmp_path, _colour_data().test.x[:4])


@pytest.mark.skipif(not (SHARED_WEIGHTS / "efficientnet_lite0_imagenet.keras").is_file(), reason="no Lite0 file")
def test_the_lite0_file_installs_trains_saves_reloads_and_exports(keras_home, tmp_path):
    from trainer.ml.backbones import CATALOGUE
    from trainer.ml.runtimes import ONNX_FILE, check_record_path
    from trainer.ml.train import MODEL_FILE, train
    from trainer.ml.weights import install_from

    installed = install_from(SHARED_WEIGHTS, [CATALOGUE["efficientnet_lite0"]])
    assert [i.backbone.name for i in installed] == ["efficientnet_lite0"]
    config = TrainConfig.from_dict({"arch": "efficientnet_lite0", "image_size": 64, "epochs": 6})
    result = train(config.resolve(on_gpu=False, class_counts=[24] * 3), _colour_data(64), tmp_path / "out", None)
    assert result.metrics["accuracy"] >= 0.9  # ImageNet features tell red from blue
    # Training already converted it for ONNX Runtime and kept the file only because it answered
    # the test images like Keras (within 1e-5): the ONNX export is that same conversion.
    onnx = tmp_path / "out" / ONNX_FILE
    assert onnx.is_file() and check_record_path(onnx).is_file()
    _export_matches_keras(tmp_path / "out" / MODEL_FILE, tmp_path, _colour_data(64).test.x[:2], onnx=False)


# --- through the platform: a job, a second job, a scoring run ---------------------------------


@pytest.mark.django_db
def test_an_auto_job_on_colour_images_uses_the_installed_backbone_and_says_why(tiny, colour_dataset):
    from trainer.jobs.services import training_job_repeat, training_job_run, training_job_start

    # auto with fewer head epochs than its 200 (a field changed from auto's defaults carries over):
    # the head is a logistic regression on 120 images, and each epoch costs a Keras fit loop.
    job = training_job_start(dataset=colour_dataset, config=TrainConfig(epochs=30), enqueue=False)
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.recipe == (
        "Tiny at 32 px, frozen features + trained head: small images (median side 16 px), 120 images, 3 classes"
    )
    assert job.config["arch"] == "tiny" and job.phase == "" and job.progress == 1.0
    assert any(e["message"] == f"auto chose {job.recipe}." for e in job.events)
    assert job.model_version.backbone_sha256 == tiny.sha256 and job.model_version.arch == "tiny"
    assert job.model_version.metrics["transfer"]["kept"] == "frozen head"

    again = training_job_repeat(job=job)  # the same snapshot, backbone and size: features from the cache
    training_job_run(job_id=again.pk)
    again.refresh_from_db()
    assert again.status == "succeeded" and again.recipe == ""  # the resolved config is repeated as it is
    assert any("Features reused from the cache" in e["message"] for e in again.events)


@pytest.mark.django_db
def test_a_changed_backbone_file_or_snapshot_recomputes_the_features(tiny, colour_dataset, tmp_path):
    from datasets.services import images_add
    from tests.images import colour_image
    from trainer.jobs.services import training_job_run, training_job_start
    from trainer.ml.weights import install_file

    def run() -> list[str]:
        job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "tiny", "epochs": 3}),
                                 enqueue=False)  # fmt: skip
        training_job_run(job_id=job.pk)
        job.refresh_from_db()
        assert job.status == "succeeded", job.error
        return [e["message"] for e in job.events]

    run()
    assert any("Features reused" in m for m in run())
    install_file(path=tiny_backbone_file(tmp_path / "other.keras", seed=1), name="tiny", feature_layer="pool",
                 image_size=32, builtin_preprocessing=True)  # fmt: skip
    assert not any("Features reused" in m for m in run())  # another file under the same name
    assert any("Features reused" in m for m in run())
    images_add(dataset=colour_dataset, items=[("new-red.png", colour_image("red", seed=999), "red")])
    assert not any("Features reused" in m for m in run())  # another snapshot


@pytest.mark.django_db
def test_a_worker_on_another_host_reuses_the_features_stored_by_the_first(tiny, colour_dataset, settings, tmp_path):
    from django.core.management import call_command

    from trainer.jobs.services import training_job_repeat, training_job_run, training_job_start

    settings.TRAIN_WORK_DIR = tmp_path / "host-a"
    job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "tiny", "epochs": 3}),
                             enqueue=False)  # fmt: skip
    training_job_run(job_id=job.pk)
    stored = [p for p in (Path(settings.MEDIA_ROOT) / "features").rglob("*.tar")]
    assert len(stored) == 1
    call_command("verify_storage")  # named by the job's snapshot, with its SHA-256: no orphan

    settings.TRAIN_WORK_DIR = tmp_path / "host-b"  # no disk in common with host A
    again = training_job_repeat(job=job)
    training_job_run(job_id=again.pk)
    again.refresh_from_db()
    messages = [e["message"] for e in again.events]
    assert again.status == "succeeded" and "Features reused from stored by another worker" not in messages
    assert any(m.startswith("Features reused from storage") for m in messages), messages

    # Damaged in storage: the next host computes its own, and the job succeeds all the same.
    data = bytearray(stored[0].read_bytes())
    data[len(data) // 3] ^= 0xFF
    stored[0].write_bytes(bytes(data))
    settings.TRAIN_WORK_DIR = tmp_path / "host-c"
    third = training_job_repeat(job=job)
    training_job_run(job_id=third.pk)
    third.refresh_from_db()
    assert third.status == "succeeded" and not any("Features reused" in e["message"] for e in third.events)
    assert [p.read_bytes() != bytes(data) for p in (Path(settings.MEDIA_ROOT) / "features").rglob("*.tar")] == [True]


@pytest.mark.django_db
def test_scoring_with_a_transfer_model_reuses_its_jobs_features(tiny, colour_dataset, monkeypatch):
    from classification.scoring.services import scoring_run, scoring_start
    from datasets.models import Image
    from trainer.jobs.services import training_job_run, training_job_start
    from trainer.jobs.snapshots import features_folder

    job = training_job_start(
        dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "tiny", "epochs": 30}), enqueue=False
    )
    training_job_run(job_id=job.pk)
    full = scoring_run(run_id=scoring_start(dataset=colour_dataset, enqueue=False).pk)
    assert full.status == "succeeded"
    expected = dict(Image.objects.values_list("pk", "suggestion_confidence"))

    monkeypatch.setattr(
        "classification.scoring.services.image_pixels", lambda *a: pytest.fail("decoded an image the cache holds")
    )
    assert features_folder(job.snapshot, tiny, image_size=32).is_dir()
    reused = scoring_run(run_id=scoring_start(dataset=colour_dataset, enqueue=False).pk)
    assert reused.status == "succeeded" and reused.processed == 120
    for pk, confidence in Image.objects.values_list("pk", "suggestion_confidence"):
        assert confidence == pytest.approx(expected[pk], abs=1e-4)


@pytest.mark.django_db
def test_a_cancel_stops_the_job_during_the_feature_pass(tiny, colour_dataset, monkeypatch):
    from trainer.jobs.services import training_job_run, training_job_start
    from trainer.models import TrainingJob

    job = training_job_start(
        dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "tiny", "epochs": 30}), enqueue=False
    )
    TrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)  # as if pressed while it decodes
    monkeypatch.setattr("trainer.ml.transfer.train_transfer", lambda *a, **k: pytest.fail("trained after a cancel"))
    training_job_run(job_id=job.pk)
    job.refresh_from_db()
    # Read at the first progress write: it stops while decoding, before any feature is computed.
    assert job.status == "cancelled" and job.phase == "decoding" and not hasattr(job, "model_version")


@pytest.mark.django_db
def test_a_from_scratch_job_leaves_the_decoding_phase_and_jobs_on_unknown_backbones_still_render(colour_dataset):
    from trainer.jobs.services import JobReporter, training_job_start
    from trainer.models import TrainingJob

    job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "resnet"}), enqueue=False)
    TrainingJob.objects.filter(pk=job.pk).update(status="running", attempts=1)
    reporter = JobReporter(job.pk, 1, 12)
    reporter.phase("decoding", 0, 120)
    reporter.start(0, 10)
    reporter.batch_end(0, 5, 10, images_per_second=100.0)
    job.refresh_from_db()
    assert job.phase == "" and job.phase_text == "epoch 0 of 12" and job.eta_seconds is not None
    # A backbone file installed on a worker host only: this process has no such architecture.
    elsewhere = TrainingJob(dataset=colour_dataset, config={"arch": "company_net", "epochs": 50, "fine_tune_epochs": 2})
    assert elsewhere.epochs == 52 and elsewhere.is_transfer
