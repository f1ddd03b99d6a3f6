"""trainer.ml on its own: arrays in, model folder out, no Django involved."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from trainer.ml.config import ConfigError, TrainConfig

SHARED_WEIGHTS = Path(
    os.environ.get("SHARED_WEIGHTS_DIR", Path(__file__).resolve().parents[2] / "shared/weights/models")
)


def test_config_round_trips_and_coerces_strings():
    config = TrainConfig.from_dict({"epochs": "3", "learning_rate": "0.01", "flip": "off", "rotation": "15"})
    assert (config.epochs, config.learning_rate, config.flip, config.rotation) == (3, 0.01, False, 15.0)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_each_architecture_starts_from_its_own_defaults():
    baseline = TrainConfig.from_dict({"arch": "baseline"})
    # The seed notebook's recipe: Adam 1e-3, 10 epochs of 64, no augmentation or smoothing.
    assert (baseline.optimizer, baseline.learning_rate, baseline.epochs, baseline.batch_size) == ("adam", 1e-3, 10, 64)
    assert not (baseline.flip or baseline.translate or baseline.label_smoothing or baseline.flip_tta)
    assert TrainConfig.from_dict({}).arch == "auto"  # settled when the job starts, on its data
    resnet = TrainConfig.from_dict({"arch": "resnet"})
    assert (resnet.arch, resnet.schedule, resnet.optimizer, resnet.flip, resnet.flip_tta) == (
        "resnet", "one_cycle", "sgd", True, True)  # fmt: skip
    assert resnet.label_smoothing > 0 and resnet.translate > 0 and resnet.batch_size >= 256
    mobile = TrainConfig.from_dict({"arch": "mobilenetv2", "epochs": 2, "fine_tune_epochs": 3})
    assert mobile.epochs == 2 and mobile.image_size == 224 and mobile.early_stopping_patience > 0
    assert mobile.total_epochs == 2 + 3 and TrainConfig.defaults("mobilenetv2").fine_tune_epochs == 0


def test_resolve_settles_every_auto_field_for_the_device_and_data():
    config = TrainConfig.from_dict({"batch_size": 512, "learning_rate": 0.4})
    on_cpu = config.resolve(on_gpu=False, class_counts=[5000, 5000])
    assert (on_cpu.size, on_cpu.mixed_precision, on_cpu.class_weighting) == ("medium", "off", "off")
    on_gpu = config.resolve(on_gpu=True, class_counts=[5000, 1000])
    assert (on_gpu.size, on_gpu.mixed_precision, on_gpu.class_weighting) == ("large", "on", "on")
    assert on_gpu.resolve(on_gpu=False, class_counts=[1, 1]).size == "large"  # resolved once, kept
    # A CPU with bfloat16 units (AMX, AVX-512 BF16) gets mixed precision; the seed's baseline stays float32.
    assert config.resolve(on_gpu=False, class_counts=[9, 9], cpu_bf16=True).mixed_precision == "on"
    baseline = TrainConfig.from_dict({"arch": "baseline"})
    assert baseline.resolve(on_gpu=False, class_counts=[9, 9], cpu_bf16=True).mixed_precision == "off"
    # 600 images: batches shrink to keep ten steps an epoch, SGD's rate with them.
    small = config.resolve(on_gpu=False, class_counts=[300, 300])
    assert (small.batch_size, small.learning_rate) == (32, 0.025)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"arch": "vgg99"}, "arch: unknown value 'vgg99'; choose from auto, resnet, baseline"),
        ({"epochs": 0}, "epochs: must be between 1 and 1000"),
        ({"batch_size": 10**6}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"epochs": 2.5}, "not a whole number"),
        ({"colour": "blue"}, "unknown config fields: colour"),
        ({"flip": "maybe"}, "not true or false"),
        ({"schedule": "step"}, "schedule: unknown value"),
        ({"label_smoothing": 0.9}, "label_smoothing: must be between 0 and 0.5"),
        ({"arch": "mobilenet", "image_size": 24}, "needs at least 32 px"),
    ],
)
def test_config_rejects_bad_values_by_name(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_one_cycle_rises_to_the_peak_then_falls_to_zero():
    from trainer.ml.layers import OneCycle

    schedule = OneCycle(0.5, total=100, warmup=20)
    rates = [float(schedule(step)) for step in (0, 10, 20, 60, 100)]
    assert rates == pytest.approx([0.02, 0.26, 0.5, 0.25, 0.0], abs=1e-6)


# That trainer/ml imports no Django is tests/test_boundaries.py's to check (every import, from the syntax tree).


def test_baseline_is_the_seed_notebook_network():
    from trainer.ml.architectures import build_baseline

    model = build_baseline(32, 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Rescaling", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D",
                     "Flatten", "Dense", "Dropout", "Dense"]  # fmt: skip
    assert [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D"] == [32, 64, 64]
    assert model.layers[-3].units == 64 and model.layers[-2].rate == 0.5
    assert model.count_params() == 122_570  # the seed's summary for CIFAR-10
    assert model.input.dtype == "uint8"  # scaling is inside the model


def _blobs(n: int, rng: np.random.Generator, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    x = np.where(y[:, None, None, None] == 0, 40, 210) + rng.integers(-30, 30, (n, size, size, 3))
    return x.clip(0, 255).astype(np.uint8), y


class Recorder:
    """A Reporter that remembers what it was told."""

    def __init__(self, stop_after: int | None = None, crash_after: int | None = None) -> None:
        self.starts, self.epochs, self.stop_after, self.crash_after = [], [], stop_after, crash_after
        self.phases = []

    def start(self, epoch, steps):
        self.starts.append((epoch, steps))

    def epoch_end(self, epoch, logs):
        self.epochs.append((epoch, sorted(logs)))
        if self.crash_after is not None and epoch + 1 >= self.crash_after:
            raise SystemExit("worker killed")  # what the process sees of a SIGKILL: nothing after this

    def batch_end(self, epoch, step, steps, images_per_second):
        pass

    def should_stop(self):
        return self.stop_after is not None and len(self.epochs) >= self.stop_after

    def phase(self, name, done, total):
        self.phases.append((name, done, total))


def _data(seed: int, n: int = 96, size: int = 24):
    from trainer.ml.train import Split, TrainData

    rng = np.random.default_rng(seed)
    splits = [Split(*_blobs(count, rng, size)) for count in (n, 32, 32)]
    return TrainData(["dark", "light"], *splits)


def test_baseline_learns_a_separable_task_and_writes_a_model_folder(tmp_path):
    from trainer.ml.train import MODEL_FILE, RUN_FILE, train

    recorder = Recorder()
    config = TrainConfig.from_dict({"arch": "baseline", "image_size": 24, "epochs": 3, "batch_size": 16,
                                    "learning_rate": 3e-3})  # fmt: skip
    result = train(config, _data(0), tmp_path, reporter=recorder)
    assert result.metrics["accuracy"] >= 0.9
    assert result.metrics["evaluated_on"] == "test"
    assert set(result.metrics["per_class"]) == {"dark", "light"}
    assert sum(map(sum, result.metrics["confusion_matrix"])) == 32
    assert recorder.starts == [(0, 6)] and [e[0] for e in recorder.epochs] == [0, 1, 2]
    assert recorder.epochs[0][1] == ["accuracy", "loss", "val_accuracy", "val_loss"]
    run = json.loads((tmp_path / RUN_FILE).read_text())
    assert run["config"] == config.to_dict() and run["classes"] == ["dark", "light"]
    assert (tmp_path / MODEL_FILE).stat().st_size > 0


def test_whitening_kernel_decorrelates_two_by_two_patches():
    from trainer.ml.architectures import PixelStats

    rng = np.random.default_rng(0)
    # Blocky images: neighbouring pixels equal, channels mixed; strongly correlated patches.
    coarse = rng.normal(size=(300, 12, 12, 3)) @ np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    images = np.clip(np.repeat(np.repeat(coarse, 3, 1), 3, 2) * 40 + 128, 0, 255).astype(np.uint8)
    stats = PixelStats.of(images)
    unit = (images.astype(np.float32) - stats.mean) / np.sqrt(stats.variance)
    patches = np.stack([unit[:, i : i + 35, j : j + 35] for i in (0, 1) for j in (0, 1)], axis=-2).reshape(-1, 12)
    before = np.corrcoef(patches.T)
    whitened = patches @ stats.whitening.reshape(12, 24)
    assert np.abs(before - np.eye(12)).max() > 0.5  # the pixels really were correlated
    # The first 12 outputs have identity covariance (the small-variance directions
    # are held back by epsilon); the other 12 are their negatives.
    covariance = np.cov(whitened[:, :12].T)
    np.testing.assert_allclose(np.diag(covariance)[-6:], 1, atol=0.05)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=0.05)
    np.testing.assert_allclose(whitened[:, 12:], -whitened[:, :12], atol=1e-4)


@pytest.mark.parametrize("mixed", ["off", "on"])
def test_resnet_learns_and_serves_flip_averaged_predictions(tmp_path, mixed):
    import keras

    from trainer.ml.architectures import PixelStats
    from trainer.ml.train import MODEL_FILE, train

    config = TrainConfig.from_dict({"arch": "resnet", "image_size": 24, "epochs": 4, "batch_size": 16, "size": "small",
                                    "rotation": 5, "zoom": 0.1, "contrast": 0.1, "mixed_precision": mixed})  # fmt: skip
    data = _data(2)
    result = train(config.resolve(on_gpu=False, class_counts=[48, 48]), data, tmp_path)  # "on": bfloat16 on CPU
    assert result.metrics["accuracy"] >= 0.9
    model = keras.saving.load_model(tmp_path / MODEL_FILE)  # custom layers load by registration
    assert model.output.dtype == "float32"
    (inner,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    # The frozen whitening stem kept the kernel computed from the training images.
    whitening = inner.get_layer("stem_whiten").get_weights()[0]
    np.testing.assert_allclose(whitening, PixelStats.of(data.train.x).whitening, rtol=1e-5, atol=1e-5)
    kinds = {type(layer).__name__ for layer in inner.layers}
    assert {"RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast", "Add",
            "BatchNormalization", "Normalization"} <= kinds  # fmt: skip
    assert model.input.dtype == "uint8"
    images = _data(3).test.x[:8]
    # Flip test-time augmentation: an image and its mirror get the same answer;
    # augmentation layers are inactive at inference, so answers are repeatable.
    np.testing.assert_allclose(
        model.predict(images, verbose=0), model.predict(images[:, :, ::-1], verbose=0), atol=1e-5
    )
    np.testing.assert_allclose(model.predict(images, verbose=0), model.predict(images, verbose=0))


def test_should_stop_ends_training_after_the_current_epoch(tmp_path):
    from trainer.ml.train import train

    recorder = Recorder(stop_after=1)
    config = TrainConfig.from_dict({"arch": "baseline", "image_size": 24, "epochs": 5, "batch_size": 16})
    result = train(config, _data(1, n=32), tmp_path, reporter=recorder)
    assert result.stopped_early and len(recorder.epochs) == 1


def test_a_killed_run_resumes_from_its_last_epoch_checkpoint(tmp_path):
    from trainer.ml.train import train

    config = TrainConfig.from_dict({"arch": "resnet", "image_size": 24, "epochs": 4, "batch_size": 16, "size": "small"})
    config = config.resolve(on_gpu=False, class_counts=[48, 48])
    checkpoints, data = tmp_path / "checkpoints", _data(4)
    with pytest.raises(SystemExit):
        train(config, data, tmp_path / "first", Recorder(crash_after=2), checkpoint_dir=checkpoints)
    assert not (tmp_path / "first").exists()  # no model from a run that died

    again = Recorder()
    result = train(config, data, tmp_path / "second", again, checkpoint_dir=checkpoints)
    assert again.starts == [(2, 12)] and [e[0] for e in again.epochs] == [2, 3]  # epochs 3 and 4 only
    assert result.resumed_from_epoch == 2 and result.metrics["accuracy"] >= 0.9


def test_early_stopping_ends_a_run_whose_validation_loss_stops_improving(tmp_path):
    from trainer.ml.train import Split, train

    data = _data(6)
    rng = np.random.default_rng(7)
    data.val = Split(data.val.x, rng.integers(0, 2, len(data.val)))  # labels unrelated to the images
    config = TrainConfig.from_dict({"arch": "baseline", "image_size": 24, "epochs": 40, "batch_size": 16,
                                    "learning_rate": 3e-3, "early_stopping_patience": 2})  # fmt: skip
    result = train(config, data, tmp_path)
    # As the model grows sure of the training labels, the loss on random labels
    # only rises: the run stops two epochs after its best, far short of 40.
    assert len(result.history["loss"]) < 15
    assert not result.stopped_early  # that flag means a user's cancel


@pytest.mark.parametrize("limit", [0, 2**40], ids=["streamed from a memory map", "in memory"])
def test_batches_come_from_memory_or_stream_from_a_memory_map(tmp_path, monkeypatch, limit):
    from trainer.ml import train as training

    monkeypatch.setattr(training, "IN_MEMORY_BYTES", limit)
    x, y = _blobs(50, np.random.default_rng(8))
    np.save(tmp_path / "x.npy", x)
    split = training.Split(np.load(tmp_path / "x.npy", mmap_mode="r"), y)
    in_order = list(training._dataset(split, 16, 2).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([b[0] for b in in_order]), x)  # evaluation keeps the order
    np.testing.assert_array_equal(np.concatenate([b[1] for b in in_order]).argmax(1), y)
    shuffled = list(training._dataset(split, 16, 2, shuffle_seed=3).as_numpy_iterator())
    assert len(shuffled) == 3  # 50 images: three full batches, the remainder dropped
    images, labels = np.concatenate([b[0] for b in shuffled]), np.concatenate([b[1] for b in shuffled]).argmax(1)
    lookup = {img.tobytes(): label for img, label in zip(x, y, strict=True)}
    assert all(lookup[img.tobytes()] == label for img, label in zip(images, labels, strict=True))  # pairs kept


def test_class_weights_are_inverse_frequency_with_mean_one():
    from trainer.ml.train import Split, TrainData, _class_weights

    y = np.array([0] * 80 + [1] * 20)
    data = TrainData(["many", "few"], Split(np.zeros((100, 4, 4, 3), np.uint8), y), Split(y[:0], y[:0]),
                     Split(y[:0], y[:0]))  # fmt: skip
    config = TrainConfig().resolve(on_gpu=False, class_counts=data.class_counts())
    assert config.class_weighting == "on"  # 80 vs 20 is imbalanced
    weights = _class_weights(data, config)
    assert weights.tolist() == pytest.approx([0.625, 2.5])
    assert float(weights[y].mean()) == pytest.approx(1.0)


def test_missing_backbone_weights_say_how_to_install_them(tmp_path, monkeypatch):
    from trainer.ml.backbones import CATALOGUE, feature_extractor
    from trainer.ml.weights import WeightsMissing

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(
        WeightsMissing, match=r"efficientnetb0 are not installed.*manage.py fetch_weights efficientnetb0"
    ):
        feature_extractor(CATALOGUE["efficientnetb0"], 224)


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason=f"no ImageNet weights at {SHARED_WEIGHTS}")
def test_transfer_learning_trains_the_head_on_features_then_fine_tunes_the_backbone(tmp_path, monkeypatch):
    from trainer.ml.backbones import CATALOGUE
    from trainer.ml.train import train
    from trainer.ml.weights import install_from

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert install_from(SHARED_WEIGHTS, [CATALOGUE["mobilenetv2_035"]])
    config = TrainConfig.from_dict({"arch": "mobilenetv2_035", "image_size": 32, "epochs": 10, "fine_tune_epochs": 1,
                                    "batch_size": 16}).resolve(on_gpu=False, class_counts=[48, 48])  # fmt: skip
    recorder = Recorder()
    result = train(config, _data(5, size=32), tmp_path / "out", recorder)
    assert [p[0] for p in recorder.phases] == ["head", "fine-tuning", "evaluating"]
    assert result.metrics["accuracy"] >= 0.8 and result.metrics["transfer"]["fine_tuned_val_accuracy"] is not None
    assert result.metrics["transfer"]["kept"] in ("frozen head", "fine-tuned")
