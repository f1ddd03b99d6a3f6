"""Training and test-split evaluation of one run, from arrays to a saved model folder.

A model folder holds `model.keras` and `run.json` (config, classes, metrics), so
it rebuilds itself without the database.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import classification_report, confusion_matrix

from trainer.ml.architectures import build_model
from trainer.ml.config import TrainConfig

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
RUN_FILE = "run.json"


class Reporter(Protocol):
    """What the trainer tells its caller, and asks it, while it runs."""

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...
    def batch_end(self, epoch: int, step: int, steps: int, images_per_second: float) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass
class Split:
    x: np.ndarray  # uint8 (n, size, size, 3)
    y: np.ndarray  # int (n,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainData:
    classes: list[str]
    train: Split
    val: Split
    test: Split


@dataclass
class TrainResult:
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    stopped_early: bool = False
    model_dir: Path = field(default_factory=Path)


def train(config: TrainConfig, data: TrainData, out_dir: Path, reporter: Reporter | None = None) -> TrainResult:
    if len(data.train) == 0:
        raise ValueError("the training split is empty")
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.arch, config.image_size, len(data.classes))
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callback = _ReporterCallback(reporter, config.batch_size) if reporter else None
    fit = model.fit(
        _dataset(data.train, config, shuffle=True),
        validation_data=_dataset(data.val, config, shuffle=False) if len(data.val) else None,
        epochs=config.epochs,
        callbacks=[callback] if callback else [],
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=0,
    )
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    evaluated = data.test if len(data.test) else data.val
    metrics = evaluate(model, evaluated, data.classes, config.batch_size)
    metrics["evaluated_on"] = "test" if len(data.test) else "val"
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    run = {"config": config.to_dict(), "classes": data.classes, "metrics": metrics, "history": history}
    (out_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
    stopped = bool(callback and callback.stopped)
    return TrainResult(history=history, metrics=metrics, stopped_early=stopped, model_dir=out_dir)


def _dataset(split: Split, config: TrainConfig, *, shuffle: bool) -> Any:
    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y.astype("int32")))
    if shuffle:
        # A full shuffle, as model.fit does on arrays: the data is in memory already.
        ds = ds.shuffle(len(split), seed=config.seed, reshuffle_each_iteration=True)
    return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def evaluate(model: Any, split: Split, classes: list[str], batch_size: int) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (sklearn)."""
    if len(split) == 0:
        return {"accuracy": None, "count": 0}
    probs = model.predict(split.x, batch_size=batch_size, verbose=0)
    predicted = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    report = classification_report(
        split.y, predicted, labels=labels, target_names=classes, output_dict=True, zero_division=0
    )
    return {
        "accuracy": float((predicted == split.y).mean()),
        "count": len(split),
        "per_class": {name: report[name] for name in classes},
        "macro_avg": report["macro avg"],
        "weighted_avg": report["weighted avg"],
        "confusion_matrix": confusion_matrix(split.y, predicted, labels=labels).tolist(),
    }


class _ReporterCallback(keras.callbacks.Callback):
    """Adapts Keras' callback hooks to a Reporter."""

    def __init__(self, reporter: Reporter, batch_size: int) -> None:
        super().__init__()
        self.reporter, self.batch_size = reporter, batch_size
        self.stopped = False
        self.epoch = 0
        self.started = self.last_report = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch, self.started = epoch, time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        if now - self.last_report < 1.0:  # at most one database write a second
            return
        self.last_report = now
        rate = (batch + 1) * self.batch_size / max(now - self.started, 1e-6)
        self.reporter.batch_end(self.epoch, batch + 1, int(self.params.get("steps") or 0), rate)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.reporter.epoch_end(epoch, {k: float(v) for k, v in (logs or {}).items()})
        if self.reporter.should_stop():
            self.stopped = True
            self.model.stop_training = True
