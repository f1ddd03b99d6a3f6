"""Transfer learning, features first (no Django here).

The frozen backbone's features of every image are computed once (trainer.ml.features,
cached by the caller); the head, a normalisation and a softmax layer, trains on
them in seconds with class weights, label smoothing and early stopping on the
validation split. An optional fine-tuning phase then trains the backbone's top
layers on the images (batch normalisation frozen, low rate, augmentation, early
stopping) and is kept only if it beats the frozen head on validation.

Either way the served model is one Keras model from uint8 pixels (augmentation
that is off at inference, preprocessing, backbone, head), so serving, scoring,
evaluation and exports need nothing new. The report's probabilities are the
frozen head's on the cached test features, checked against the served model
itself on a sample of test images (they are the same computation).
"""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from trainer.ml.architectures import augment
from trainer.ml.backbones import Backbone, feature_extractor, get
from trainer.ml.config import TrainConfig
from trainer.ml.features import Features
from trainer.ml.metrics import rejection_threshold, report
from trainer.ml.reporting import Reporter
from trainer.ml.runtimes import prepare_serving
from trainer.ml.train import (
    MODEL_FILE,
    RUN_FILE,
    TrainData,
    TrainResult,
    _class_weights,
    _dataset,
    _ReporterCallback,
    predict,
)

logger = logging.getLogger(__name__)

HEAD_BATCH = 256
HEAD_DROPOUT = 0.5
HEAD_MIN_DELTA = 1e-3
SAMPLE_CHECK = 16  # test images run through the served model to check the report's numbers
# Loose enough for batch-dependent kernels (TF32 on GPUs), tight enough to catch another model.
CHECK_TOLERANCE = 1e-2
FINE_TUNE_PATIENCE = 2


@dataclass
class Head:
    model: Any  # features -> probabilities
    layers: list[Any]  # the same layers, to call on the backbone's output in the served model
    history: dict[str, list[float]]


def train_transfer(
    config: TrainConfig,
    data: TrainData,
    features: Features,
    backbone: Backbone,
    out_dir: Path,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train the head on `features`, maybe fine-tune, evaluate, and save the served model to `out_dir`."""
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    _phase(reporter, "head", 0, config.epochs)
    head = train_head(config, data, features, reporter)
    model = assemble(config, backbone, head.layers)
    choice = _Choice(head_val=_accuracy(head.model, features.val[0], data.val.y))
    history = head.history
    if config.fine_tune_epochs and not len(data.val):
        logger.warning("no validation split: fine-tuning skipped (nothing could say whether it helps)")
    if config.fine_tune_epochs and len(data.val) and not _stopped(reporter):
        frozen = model.get_weights()
        _phase(reporter, "fine-tuning", 0, config.fine_tune_epochs)
        tune_history = fine_tune(config, data, model, reporter, first_epoch=len(history.get("loss", [])))
        choice.tuned_val = _accuracy_on_images(model, data, config)
        history = {k: history.get(k, []) + tune_history.get(k, []) for k in {*history, *tune_history}}
        if not choice.tuned_wins:
            model.set_weights(frozen)  # the head's layers are shared: the frozen head is back whole
    seconds = time.perf_counter() - started
    if _stopped(reporter):
        return TrainResult(history, {}, stopped_early=True, model_dir=out_dir, train_seconds=seconds)
    _phase(reporter, "evaluating", 0, 1)
    probabilities, val_probabilities = _evaluate(model, head, choice, data, features, config)
    evaluated = data.test if len(data.test) else data.val
    metrics = report(evaluated.y, probabilities, data.classes)
    metrics["evaluated_on"] = "test" if len(data.test) else "val"
    metrics["transfer"] = choice.describe() | {"backbone": backbone.name, "feature_dim": backbone.feature_dim}
    if len(data.val):
        metrics["rejection"] = rejection_threshold(data.val.y, val_probabilities)
    _save(model, config, data, metrics, history, out_dir)
    return TrainResult(history, metrics, False, out_dir, 0, seconds, probabilities)


def train_head(config: TrainConfig, data: TrainData, features: Features, reporter: Reporter | None) -> Head:
    """A softmax head on the cached features (every view of the training images)."""
    views, _, dim = features.train.shape
    x = np.asarray(features.train, dtype=np.float32).reshape(-1, dim)
    y = np.tile(data.train.y, views)
    head_layers = new_head(config, len(data.classes), mean=x.mean(axis=0), variance=x.var(axis=0) + 1e-6)
    inputs = keras.Input(shape=(dim,), name="features")
    head = keras.Model(inputs, _call(head_layers, inputs), name="head")
    steps = -(-len(x) // min(HEAD_BATCH, len(x)))
    # Several steps per call (epochs are a handful of steps), never more than an epoch has:
    # the progress callback then counts real steps.
    head.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                 loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                 metrics=["accuracy"], steps_per_execution=min(8, steps))  # fmt: skip
    weights = _class_weights(data, config)
    sample_weight = None if weights is None else weights[y]
    val = (features.val[0], keras.utils.to_categorical(data.val.y, len(data.classes))) if len(data.val) else None
    callbacks = _head_callbacks(config, reporter, has_val=val is not None)
    fit = head.fit(x, keras.utils.to_categorical(y, len(data.classes)), sample_weight=sample_weight,
                   batch_size=min(HEAD_BATCH, len(x)), epochs=config.epochs, validation_data=val,
                   callbacks=callbacks, verbose=0)  # fmt: skip
    return Head(head, head_layers, {k: [float(v) for v in vs] for k, vs in fit.history.items()})


def new_head(config: TrainConfig, classes: int, *, mean: np.ndarray, variance: np.ndarray) -> list[Any]:
    """A logistic regression with dropout on its standardised inputs; weight_decay is its L2 penalty."""
    penalty = keras.regularizers.L2(config.weight_decay) if config.weight_decay else None
    return [
        layers.Normalization(mean=mean, variance=variance, name="feature_norm"),
        layers.Dropout(HEAD_DROPOUT, name="head_dropout"),
        layers.Dense(classes, activation="softmax", kernel_regularizer=penalty, dtype="float32", name="probabilities"),
    ]


def untrained_model(config: TrainConfig, classes: int) -> Any:
    """The served model's shape with an untrained head (benchmarks time it)."""
    backbone = get(config.arch)
    ones = np.ones(backbone.feature_dim, dtype=np.float32)
    return assemble(config, backbone, new_head(config, classes, mean=0 * ones, variance=ones))


def _head_callbacks(config: TrainConfig, reporter: Reporter | None, *, has_val: bool) -> list[Any]:
    callbacks: list[Any] = []
    if has_val and config.early_stopping_patience:
        # min_delta: with the L2 penalty the validation loss creeps down by 1e-5s for hundreds of
        # epochs after the accuracy has settled (Caltech photos ran all 200 without it).
        patience = config.early_stopping_patience
        stop = keras.callbacks.EarlyStopping(patience=patience, min_delta=HEAD_MIN_DELTA, restore_best_weights=True)
        callbacks.append(stop)
    if reporter:
        callbacks.append(_ReporterCallback(reporter, HEAD_BATCH))
    return callbacks


def assemble(config: TrainConfig, backbone: Backbone, head_layers: list[Any]) -> Any:
    """uint8 pixels -> (training-only augmentation) -> backbone features -> the head's layers."""
    inputs = keras.Input(shape=(config.image_size, config.image_size, 3), dtype="uint8", name="image")
    x = augment(inputs, config)
    x = feature_extractor(backbone, config.image_size)(x)
    return keras.Model(inputs, _call(head_layers, x), name=f"{backbone.name}_transfer")


def _call(head_layers: list[Any], x: Any) -> Any:
    for layer in head_layers:
        x = layer(x)
    return x


def fine_tune(
    config: TrainConfig, data: TrainData, model: Any, reporter: Reporter | None, *, first_epoch: int
) -> dict[str, list[float]]:
    """Train the backbone's top layers of `model` on the images, in place."""
    tuned = model
    base = _backbone_of(tuned)
    base.trainable = True
    trainable = [layer for layer in base.layers if layer.weights]
    for layer in trainable[: -config.fine_tune_layers]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False  # ImageNet statistics and scales: a few hundred photos would wreck them
    tuned.compile(optimizer=keras.optimizers.Adam(config.fine_tune_learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])  # fmt: skip
    classes = len(data.classes)
    batch = min(config.batch_size, len(data.train))
    train_ds = _dataset(data.train, batch, classes, shuffle_seed=config.seed, weights=_class_weights(data, config))
    stop = keras.callbacks.EarlyStopping(patience=FINE_TUNE_PATIENCE, restore_best_weights=True)
    callbacks = [stop, *([_ReporterCallback(reporter, batch, announce=False)] if reporter else [])]
    fit = tuned.fit(train_ds, validation_data=_dataset(data.val, batch, classes), initial_epoch=first_epoch,
                    epochs=first_epoch + config.fine_tune_epochs, callbacks=callbacks, shuffle=False,
                    verbose=0)  # fmt: skip
    return {k: [float(v) for v in vs] for k, vs in fit.history.items()}


def _backbone_of(model: Any) -> Any:
    extractor = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    return next(layer for layer in extractor.layers if isinstance(layer, keras.Model))


@dataclass
class _Choice:
    head_val: float | None  # None without a validation split (and then no fine-tuning)
    tuned_val: float | None = None

    @property
    def tuned_wins(self) -> bool:
        # Ties keep the frozen head: the same answers for less risk.
        return self.tuned_val is not None and self.head_val is not None and self.tuned_val > self.head_val

    def describe(self) -> dict[str, Any]:
        kept = "fine-tuned" if self.tuned_wins else "frozen head"
        return {"kept": kept, "head_val_accuracy": self.head_val, "fine_tuned_val_accuracy": self.tuned_val}


def _evaluate(
    model: Any, head: Head, choice: _Choice, data: TrainData, features: Features, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the served model on the evaluated split and on val."""
    evaluated, evaluated_features = (data.test, features.test) if len(data.test) else (data.val, features.val)
    classes, batch = len(data.classes), min(config.batch_size, 64)
    if choice.tuned_wins:
        return predict(model, evaluated, classes, batch), predict(model, data.val, classes, batch)
    probabilities = _predict_features(head.model, evaluated_features[0], classes)
    _check_sample(model, evaluated, probabilities)
    return probabilities, _predict_features(head.model, features.val[0], classes)


def _check_sample(model: Any, split: Any, probabilities: np.ndarray) -> None:
    """The served model must give the report's numbers: run it on a few images."""
    count = min(SAMPLE_CHECK, len(split))
    if not count:
        return
    served = np.asarray(model(np.asarray(split.x[:count]), training=False))
    difference = float(np.abs(served - probabilities[:count]).max())
    if difference > CHECK_TOLERANCE or not np.array_equal(served.argmax(1), probabilities[:count].argmax(1)):
        raise RuntimeError(f"the served model differs from the cached features' head by {difference:.2g}")


def _predict_features(head: Any, x: np.ndarray, classes: int) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0, classes), dtype=np.float32)
    return np.asarray(head.predict(np.asarray(x), batch_size=HEAD_BATCH, verbose=0))


def _accuracy(head: Any, x: np.ndarray, y: np.ndarray) -> float | None:
    if len(y) == 0:
        return None
    return float((_predict_features(head, x, int(head.output.shape[-1])).argmax(axis=1) == y).mean())


def _accuracy_on_images(model: Any, data: TrainData, config: TrainConfig) -> float:
    probabilities = predict(model, data.val, len(data.classes), min(config.batch_size, 64))
    return float((probabilities.argmax(axis=1) == data.val.y).mean())


def _save(model: Any, config: TrainConfig, data: TrainData, metrics: dict[str, Any],
          history: dict[str, list[float]], out_dir: Path) -> None:  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    prepare_serving(out_dir / MODEL_FILE, data.test.x if len(data.test) else data.val.x)
    run = {"config": config.to_dict(), "classes": data.classes, "metrics": metrics, "history": history}
    (out_dir / RUN_FILE).write_text(json.dumps(run, indent=2))


def _phase(reporter: Reporter | None, name: str, done: int, total: int) -> None:
    if reporter:
        reporter.phase(name, done, total)


def _stopped(reporter: Reporter | None) -> bool:
    return bool(reporter and reporter.should_stop())
