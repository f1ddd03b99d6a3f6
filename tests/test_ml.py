"""trainer.ml on its own: arrays in, model folder out, no Django involved."""

import json
import subprocess
import sys

import numpy as np
import pytest

from trainer.ml.config import ConfigError, TrainConfig


def test_config_round_trips_and_coerces_strings():
    config = TrainConfig.from_dict({"epochs": "3", "learning_rate": "0.01"})
    assert (config.epochs, config.learning_rate) == (3, 0.01)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"arch": "vgg99"}, "unknown architecture"),
        ({"epochs": 0}, "epochs: must be between 1 and 1000"),
        ({"batch_size": 10**6}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"epochs": 2.5}, "not a whole number"),
        ({"colour": "blue"}, "unknown config fields: colour"),
    ],
)
def test_config_rejects_bad_values_by_name(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_trainer_ml_imports_no_django():
    code = "import sys, trainer.ml.train, trainer.ml.device; print(any(m.startswith('django') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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


def _blobs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    x = np.where(y[:, None, None, None] == 0, 40, 210) + rng.integers(-30, 30, (n, 24, 24, 3))
    return x.clip(0, 255).astype(np.uint8), y


def test_train_learns_a_separable_task_and_writes_a_model_folder(tmp_path):
    from trainer.ml.train import MODEL_FILE, RUN_FILE, Split, TrainData, train

    rng = np.random.default_rng(0)
    data = TrainData(["dark", "light"], Split(*_blobs(96, rng)), Split(*_blobs(32, rng)), Split(*_blobs(32, rng)))
    events = []

    class Recorder:
        def epoch_end(self, epoch, logs):
            events.append((epoch, sorted(logs)))

        def batch_end(self, epoch, step, steps, images_per_second):
            pass

        def should_stop(self):
            return False

    config = TrainConfig(image_size=24, epochs=3, batch_size=16, learning_rate=3e-3)
    result = train(config, data, tmp_path, reporter=Recorder())
    assert result.metrics["accuracy"] >= 0.9
    assert result.metrics["evaluated_on"] == "test"
    assert set(result.metrics["per_class"]) == {"dark", "light"}
    assert sum(map(sum, result.metrics["confusion_matrix"])) == 32
    assert [e[0] for e in events] == [0, 1, 2]
    assert events[0][1] == ["accuracy", "loss", "val_accuracy", "val_loss"]
    run = json.loads((tmp_path / RUN_FILE).read_text())
    assert run["config"] == config.to_dict() and run["classes"] == ["dark", "light"]
    assert (tmp_path / MODEL_FILE).stat().st_size > 0


def test_should_stop_ends_training_after_the_current_epoch(tmp_path):
    from trainer.ml.train import Split, TrainData, train

    rng = np.random.default_rng(1)
    data = TrainData(["a", "b"], Split(*_blobs(32, rng)), Split(*_blobs(8, rng)), Split(*_blobs(8, rng)))

    class StopAtOnce:
        epochs = 0

        def epoch_end(self, epoch, logs):
            self.epochs += 1

        def batch_end(self, *args):
            pass

        def should_stop(self):
            return True

    reporter = StopAtOnce()
    result = train(TrainConfig(image_size=24, epochs=5), data, tmp_path, reporter=reporter)
    assert result.stopped_early and reporter.epochs == 1
