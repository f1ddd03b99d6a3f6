"""Training and test-split evaluation of one run, from arrays to a saved model folder.

A model folder holds `model.keras` and `run.json` (config, classes, metrics), so
it rebuilds itself without the database. With a checkpoint folder the run saves
its state after every epoch and, started again with the same folder, resumes
from the last finished epoch (the worker died, the job was re-queued).
"""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.ml.architectures import PixelStats, build_model, with_flip_tta
from trainer.ml.config import TrainConfig
from trainer.ml.layers import OneCycle
from trainer.ml.metrics import SUMMARY_METRICS, rejection_threshold, report
from trainer.ml.reporting import Interrupted, Reporter
from trainer.ml.runtimes import prepare_serving

logger = logging.getLogger(__name__)

# Training images up to this size are held in memory; larger ones stream from the cache.
IN_MEMORY_BYTES = 2 * 1024**3
MODEL_FILE = "model.keras"
RUN_FILE = "run.json"


@dataclass
class Split:
    x: np.ndarray  # uint8 (n, size, size, 3); may be a read-only memory map
    y: np.ndarray  # int (n,)
    ids: np.ndarray | None = None  # which stored image each row is, when the arrays come from a dataset

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainData:
    classes: list[str]
    train: Split
    val: Split
    test: Split

    def class_counts(self) -> list[int]:
        return np.bincount(self.train.y, minlength=len(self.classes)).tolist()


@dataclass
class TrainResult:
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    stopped_early: bool = False
    model_dir: Path = field(default_factory=Path)
    resumed_from_epoch: int = 0
    train_seconds: float = 0.0  # inside model.fit, this attempt: no data loading, evaluation or saving
    # The served model's probabilities on the evaluated split (metrics["evaluated_on"]), row by row.
    probabilities: np.ndarray | None = None


def train(
    config: TrainConfig,
    data: TrainData,
    out_dir: Path,
    reporter: Reporter | None = None,
    *,
    checkpoint_dir: Path | None = None,
    on_gpu: bool = False,
    features: Any = None,
) -> TrainResult:
    """Train `config` (already resolved: no "auto" left) on `data` and save the model to `out_dir`.
    Pretrained backbones train on `features` (trainer.ml.features; computed here, uncached, if not given)."""
    if len(data.train) == 0:
        raise ValueError("the training split is empty")
    if config.arch == "auto":
        raise ValueError("arch 'auto' must be resolved first (trainer.ml.recipe.choose)")
    if config.is_pretrained:
        return _train_transfer(config, data, out_dir, reporter, features)
    keras.utils.set_random_seed(config.seed)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy(config, on_gpu))
    try:
        return _train(config, data, out_dir, reporter, checkpoint_dir, on_gpu)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train_transfer(
    config: TrainConfig, data: TrainData, out_dir: Path, reporter: Reporter | None, features: Any
) -> TrainResult:
    from trainer.ml import backbones
    from trainer.ml.features import compute
    from trainer.ml.transfer import train_transfer

    backbone = backbones.get(config.arch)
    if features is None:
        extractor = backbones.feature_extractor(backbone, config.image_size)
        images = {"train": data.train.x, "val": data.val.x, "test": data.test.x}
        features = compute(extractor, images, views=config.feature_views)
    return train_transfer(config, data, features, backbone, out_dir, reporter)


def distribution(config: TrainConfig) -> Any:
    """`devices="all"`: a MirroredStrategy over every GPU the worker sees, or on a host
    without one over its logical CPU devices (how the tests run it); else one device."""
    import tensorflow as tf

    if config.devices == "all":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        if len(devices) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def precision_policy(config: TrainConfig, on_gpu: bool) -> str:
    """Keras' dtype policy: float16 compute on a GPU (tensor cores), bfloat16 on a
    CPU (its range needs no loss scaling; oneDNN has bfloat16 kernels)."""
    if config.mixed_precision != "on":
        return "float32"
    return "mixed_float16" if on_gpu else "mixed_bfloat16"


def _train(
    config: TrainConfig,
    data: TrainData,
    out_dir: Path,
    reporter: Reporter | None,
    checkpoint_dir: Path | None,
    on_gpu: bool,
) -> TrainResult:
    num_classes = len(data.classes)
    strategy = distribution(config)
    replicas = int(strategy.num_replicas_in_sync)
    # Each replica keeps the configured batch; the rate grows with the global batch (linear scaling).
    batch_size = min(config.batch_size * replicas, len(data.train))
    steps = len(data.train) // batch_size
    weights = _class_weights(data, config)
    train_ds = _dataset(data.train, batch_size, num_classes, shuffle_seed=config.seed, weights=weights)
    val_ds = _dataset(data.val, batch_size, num_classes) if len(data.val) else None
    with strategy.scope():  # variables mirrored on every replica, gradients summed across them
        model = build_model(config, num_classes, PixelStats.of(data.train.x) if config.arch == "resnet" else None)
        progress = _ReporterCallback(reporter, batch_size) if reporter else None
        fit = _Fit(config, model, train_ds, val_ds, steps, progress, checkpoint_dir, on_gpu)
        history = fit.run(config.learning_rate * replicas, first=0, last=config.epochs, phase="head")

    evaluated_split = data.test if len(data.test) else data.val
    served = with_flip_tta(model) if config.flip_tta else model
    probabilities = predict(served, evaluated_split, num_classes, batch_size)
    metrics = report(evaluated_split.y, probabilities, data.classes)
    if served is not model and len(evaluated_split):  # flip TTA: show what it is worth
        plain = report(evaluated_split.y, predict(model, evaluated_split, num_classes, batch_size), data.classes)
        metrics["without_tta"] = {key: plain.get(key) for key in SUMMARY_METRICS}
    metrics["evaluated_on"] = "test" if len(data.test) else "val"
    metrics["replicas"], metrics["global_batch"] = replicas, batch_size
    if len(data.val):  # chosen on val, never on the split the report is about (unless it is val)
        metrics["rejection"] = rejection_threshold(data.val.y, predict(served, data.val, num_classes, batch_size))
    out_dir.mkdir(parents=True, exist_ok=True)
    served.save(out_dir / MODEL_FILE)
    prepare_serving(out_dir / MODEL_FILE, evaluated_split.x)
    run = {"config": config.to_dict(), "classes": data.classes, "metrics": metrics, "history": history}
    (out_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
    return TrainResult(history, metrics, fit.stopped, out_dir, fit.resumed_from, fit.seconds, probabilities)


class _Fit:
    """One `model.fit` per phase with the run's optimizer, loss and callbacks."""

    def __init__(
        self,
        config: TrainConfig,
        model: Any,
        train_ds: Any,
        val_ds: Any,
        steps: int,
        progress: "_ReporterCallback | None",
        checkpoint_dir: Path | None,
        on_gpu: bool,
    ) -> None:
        self.config, self.model, self.train_ds, self.val_ds, self.steps = config, model, train_ds, val_ds, steps
        self.progress, self.checkpoint_dir, self.on_gpu = progress, checkpoint_dir, on_gpu
        self.stopped = False
        self.resumed_from = 0
        self.seconds = 0.0

    def run(self, learning_rate: float, first: int, last: int, phase: str) -> dict[str, list[float]]:
        self._compile(learning_rate, epochs=last - first)
        callbacks: list[Any] = []
        if self.checkpoint_dir:
            backup = keras.callbacks.BackupAndRestore(str(self.checkpoint_dir / phase), delete_checkpoint=False)
            callbacks.append(backup)
        if self.config.early_stopping_patience and self.val_ds is not None:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    patience=self.config.early_stopping_patience, restore_best_weights=True, start_from_epoch=first
                )
            )
        if self.progress:
            callbacks.append(self.progress)
        # Keras saves a checkpoint only at epoch ends, so a resumed run restarts its epoch.
        started = time.perf_counter()
        fit = self.model.fit(
            self.train_ds,
            validation_data=self.val_ds,
            initial_epoch=first,
            epochs=last,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=0,
        )
        self.seconds += time.perf_counter() - started
        if self.progress and self.progress.first_epoch is not None:
            self.resumed_from = max(self.resumed_from, self.progress.first_epoch)
        self.stopped = bool(self.progress and self.progress.stopped)
        return {k: [float(v) for v in vs] for k, vs in fit.history.items()}

    def _compile(self, learning_rate: float, epochs: int) -> None:
        config, total = self.config, max(epochs * self.steps, 1)
        schedule: Any = learning_rate
        if config.schedule == "one_cycle":
            schedule = OneCycle(learning_rate, total, int(total * config.warmup_fraction))
        elif config.schedule == "cosine":
            schedule = keras.optimizers.schedules.CosineDecay(learning_rate, total)
        # The average spans the last ~5% of the steps: a fixed 0.99 would still carry
        # the random initial weights at the end of a short run.
        momentum = min(max(1 - 20 / total, 0.9), 0.999)
        common = {"learning_rate": schedule, "use_ema": config.weight_averaging, "ema_momentum": momentum}
        if config.optimizer == "sgd":
            optimizer = keras.optimizers.SGD(momentum=0.9, nesterov=True, weight_decay=config.weight_decay, **common)
        elif config.optimizer == "adamw":
            optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay or 1e-4, **common)
        else:
            optimizer = keras.optimizers.Adam(weight_decay=config.weight_decay or None, **common)
        if config.weight_decay:
            # Decay the kernels only: shrinking batch-norm scales and biases just hurts.
            optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        self.model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
            # XLA and multi-step execution pay off on GPUs; on CPU XLA is 3x slower (DESIGN.md section 8).
            jit_compile="auto" if self.on_gpu else False,
            steps_per_execution=8 if self.on_gpu else 1,
        )


def _class_weights(data: TrainData, config: TrainConfig) -> np.ndarray | None:
    """Inverse-frequency weights, mean 1 over the training images."""
    if config.class_weighting != "on":
        return None
    counts = np.asarray(data.class_counts(), dtype=np.float64)
    weights = np.where(counts > 0, len(data.train) / (len(counts) * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def _dataset(
    split: Split, batch_size: int, num_classes: int, *, shuffle_seed: int | None = None, weights: Any = None
) -> Any:
    """Batches of (uint8 images, one-hot labels[, weights]) gathered by index.
    Images up to IN_MEMORY_BYTES are gathered in-graph from memory; a larger
    memory-mapped cache is read batch by batch, streaming from disk instead of
    being copied into memory. Shuffled batches drop the remainder: a one-image
    batch would wreck batch-norm statistics."""
    training = shuffle_seed is not None
    indices = tf.data.Dataset.range(len(split))
    if training:
        indices = indices.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size, drop_remainder=training)
    gather = _gather_in_memory(split) if split.x.nbytes <= IN_MEMORY_BYTES else _gather_from_disk(split)

    def load(batch: Any) -> Any:
        x, y = gather(batch)
        labels = tf.one_hot(y, num_classes)
        if weights is None:
            return x, labels
        return x, labels, tf.gather(tf.constant(weights), y)

    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _gather_in_memory(split: Split) -> Any:
    images, labels = tf.constant(np.asarray(split.x)), tf.constant(split.y.astype(np.int32))
    return lambda batch: (tf.gather(images, batch), tf.gather(labels, batch))


def _gather_from_disk(split: Split) -> Any:
    shape = split.x.shape[1:]

    def read(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(batch)  # sequential reads; the order inside a batch does not matter
        order = np.argsort(np.argsort(batch))
        return np.ascontiguousarray(split.x[rows][order]), split.y[batch].astype(np.int32)

    def gather(batch: Any) -> Any:
        x, y = tf.numpy_function(read, [batch], (tf.uint8, tf.int32), stateful=False)
        x.set_shape((None, *shape))
        y.set_shape((None,))
        return x, y

    return gather


def predict(model: Any, split: Split, num_classes: int, batch_size: int) -> np.ndarray:
    """Class probabilities for every image of `split`, in its order."""
    if len(split) == 0:
        return np.zeros((0, num_classes), dtype=np.float32)
    return model.predict(_dataset(split, batch_size, num_classes).map(lambda x, _: x), verbose=0)


class _ReporterCallback(keras.callbacks.Callback):
    """Adapts Keras' callback hooks to a Reporter."""

    def __init__(self, reporter: Reporter, batch_size: int, *, announce: bool = True) -> None:
        super().__init__()
        # announce=False: a phase that goes on from earlier epochs (fine-tuning after the head), not a resumed run.
        self.reporter, self.batch_size, self.announce = reporter, batch_size, announce
        self.stopped = False
        self.first_epoch: int | None = None
        self.epoch = 0
        self.started = self.last_report = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.first_epoch is None:  # after BackupAndRestore moved the start
            self.first_epoch = epoch
            if self.announce:
                self.reporter.start(epoch, int(self.params.get("steps") or 0))
        self.epoch, self.started = epoch, time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        if now - self.last_report < 1.0:  # at most one database write a second
            return
        self.last_report = now
        rate = (batch + 1) * self.batch_size / max(now - self.started, 1e-6)
        self.reporter.batch_end(self.epoch, batch + 1, int(self.params.get("steps") or 0), rate)
        if self.reporter.should_stop():  # within a second, not at the end of a long epoch
            self.stopped = True
            raise Interrupted  # out of fit() before on_epoch_end: the partial epoch is not checkpointed

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.reporter.epoch_end(epoch, {k: float(v) for k, v in (logs or {}).items()})
        if self.reporter.should_stop():
            self.stopped = True
            self.model.stop_training = True
