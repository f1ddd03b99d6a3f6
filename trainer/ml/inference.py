"""What a model thinks of each image, as numbers a labelling queue can sort by
(no Django here). TensorFlow loads only inside `compiled_predict`."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Scores:
    """One row per image."""

    top: np.ndarray  # (n,) index of the most probable class
    confidence: np.ndarray  # (n,) its probability
    margin: np.ndarray  # (n,) top-1 minus top-2 probability; small: torn between two classes
    entropy: np.ndarray  # (n,) of the whole distribution, in nats; large: no idea at all


def scores(probabilities: np.ndarray) -> Scores:
    """Confidence, margin and entropy of each row of a softmax output (n, classes)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"expected probabilities of shape (n, classes), got {p.shape}")
    top = p.argmax(axis=1)
    rows = np.arange(len(p))
    # Two classes at least for a runner-up; a one-class model is never in doubt.
    second = np.partition(p, -2, axis=1)[:, -2] if p.shape[1] > 1 else np.zeros(len(p))
    # 0 · log 0 is 0: a class given nothing adds no uncertainty.
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    entropy = np.maximum(-(p * logs).sum(axis=1), 0.0)
    return Scores(top=top, confidence=p[rows, top], margin=p[rows, top] - second, entropy=entropy)


def compiled_head(model_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The head of a features-first transfer model (trainer.ml.transfer): cached
    backbone features (n, dim) in, the model's probabilities out."""
    import keras

    from trainer.ml.export import load_model

    model = load_model(model_path)
    position = next(i for i, layer in enumerate(model.layers) if layer.name.endswith("_features"))
    extractor = model.layers[position]
    x = inputs = keras.Input(shape=extractor.output.shape[1:])
    for layer in model.layers[position + 1 :]:
        x = layer(x)
    head = keras.Model(inputs, x)
    return lambda features: np.asarray(head(features, training=False))


def compiled_predict(model_path: Path, model: Any = None) -> Callable[[np.ndarray], np.ndarray]:
    """The `.keras` model at `model_path` (or `model`, that file already loaded) as one
    traced function: uint8 (n, size, size, 3) in, probabilities (n, classes) out, for
    any n without retracing."""
    import tensorflow as tf

    from trainer.ml.export import OUTPUT_NAME, input_spec, load_model, serving_function

    model = load_model(model_path) if model is None else model
    concrete = tf.function(serving_function(model), input_signature=[input_spec(model)]).get_concrete_function()
    return lambda batch: np.asarray(concrete(tf.constant(batch))[OUTPUT_NAME])
