"""A backbone's feature extractor as an ONNX file (no Django here), so that a web process
can turn an uploaded image into its vector without TensorFlow or the backbone's weights:
"more like this" from an upload searches a data-quality analysis's stored index with it.

The worker that analysed the dataset writes the file (tf2onnx, as model exports do) and
keeps it only when ONNX Runtime's vectors point where Keras' do on the dataset's own
images: a conversion that drifts would silently return the wrong neighbours."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Cosine between ONNX Runtime's and Keras' vector of one image under which the file is not
# kept. Float32 graphs converted op for op agree to ~1e-6; a wrong conversion lands far off.
AGREEMENT = 0.999
SAMPLES = 8  # of the dataset's images, checked through both

Extract = Callable[[np.ndarray], np.ndarray]


class ExtractorDrifts(Exception):
    """The converted extractor answers other vectors than Keras; the message says how far."""


def write_extractor(model: Any, samples: np.ndarray, out: Path) -> None:
    """`model` (float pixels -> pooled features) as ONNX in `out`, checked on `samples`
    (uint8, n x size x size x 3) against Keras; ExtractorDrifts (and no file) when it drifts.
    The file takes uint8 pixels, as served models do."""
    from trainer.ml.export import write_onnx

    write_onnx(model, out)
    expected = np.asarray(model(samples.astype(np.float32), training=False))
    found = extractor_load(out)(samples)
    agreement = float(_cosines(expected, found).min()) if len(samples) else 1.0
    if agreement < AGREEMENT:
        out.unlink(missing_ok=True)
        raise ExtractorDrifts(f"the ONNX extractor's vectors drift from Keras' (cosine {agreement:.4f})")


def extractor_load(path: Path, *, threads: int = 1) -> Extract:
    """uint8 pixels (n, size, size, 3) -> float32 vectors (n, dim), through ONNX Runtime."""
    from trainer.ml.runtimes import onnx_session

    predict, _shape = onnx_session(path, threads=threads)
    return lambda pixels: np.asarray(predict(np.ascontiguousarray(pixels, dtype=np.uint8)), dtype=np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    same = np.all(np.isclose(a, b, atol=1e-6), axis=1)  # two zero vectors agree
    return np.where(same, 1.0, (a * b).sum(axis=1) / norms)
