"""The runtimes a trained model can serve through (no Django here), and the choice
between them.

Every runtime takes what the `.keras` model takes, uint8 pixels (n, size, size, 3),
and answers float32 probabilities (n, classes). Two are tried:

- `tensorflow`: the Keras model as one concrete `tf.function` with a fixed input
  signature (calling it skips tf.function's argument binding and dispatch);
- `onnxruntime`: the same graph converted by tf2onnx (trainer.ml.export). On a CPU
  it answers a small CNN several times faster: TensorFlow spends most of a
  one-image call in its executor, not in the convolutions.

`fastest_runtime` keeps the fastest one whose answers on sample images are within
`TOLERANCE` of Keras'; a conversion that fails or drifts leaves the `tf.function`.
When ONNX Runtime answers like Keras, the samples, Keras' answers to them and both
timings are kept beside the `.onnx` file (`prepare_onnx` does this in the training
worker, on the test images, when a model is saved): a later load of the same model
file (a web process, a reload, a restart) checks ONNX Runtime against those stored
answers and needs no TensorFlow at all (`checked_onnx_runtime`), which takes
milliseconds instead of seconds.
"""

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TOLERANCE = 1e-5  # largest difference from Keras' probabilities a runtime may show
RUNTIMES = ("tensorflow", "onnxruntime")
TIMED_CALLS = 15  # one-image calls timed per runtime when choosing
ONNX_FILE = "model.onnx"  # beside the trained model.keras, with its check record
CHECK_IMAGES = 32  # test images a runtime is checked on

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Runtime:
    name: str  # one of RUNTIMES
    predict: Predict  # uint8 (n, size, size, 3) -> float32 (n, classes)
    nbytes: int  # the size of the model file it loaded: what a memory budget counts
    max_difference: float  # from Keras' answers on the sample images (0 for Keras itself)
    call_seconds: float  # median one-image call when it was chosen


@dataclass(frozen=True)
class Choice:
    runtime: Runtime
    tried: dict[str, str]  # runtime name -> what happened ("0.21 ms", "differs by 3e-4", an error)


_threads_set = False


def configure_tensorflow_threads(threads: int) -> None:
    """Intra- and inter-op threads of this process (0: TensorFlow's default, all
    cores). Only possible before TensorFlow's first op; later calls keep what runs."""
    global _threads_set
    import tensorflow as tf

    if _threads_set or not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:  # TensorFlow ran already here (a test, a shell)
        logger.warning("TensorFlow threads not set to %s: %s", threads, exc)
    _threads_set = True


def tensorflow_runtime(
    model_path: Path, *, image_shape: Sequence[int], warm_batches: Sequence[int] = (1,), model: Any = None
) -> Runtime:
    """The `.keras` model (`model`: the file already loaded) as a warmed-up concrete
    `tf.function` (trainer.ml.inference's, the one scoring uses), for images of
    `image_shape` (size, size, 3)."""
    from trainer.ml.inference import compiled_predict

    predict = compiled_predict(model_path, model)
    _warm(predict, tuple(image_shape), warm_batches)
    return Runtime("tensorflow", predict, model_path.stat().st_size, 0.0, 0.0)


def onnx_runtime(model_path: Path, onnx_path: Path, *, threads: int, warm_batches: Sequence[int] = (1,)) -> Runtime:
    """The model through ONNX Runtime's CPU provider, converted once into `onnx_path`
    (kept: another process, or this one after a restart, reuses it)."""
    if not onnx_path.exists():
        from trainer.ml.export import load_model, write_onnx

        write_onnx(load_model(model_path), onnx_path)
    predict, shape = onnx_session(onnx_path, threads=threads)
    _warm(predict, shape, warm_batches)
    return Runtime("onnxruntime", predict, onnx_path.stat().st_size, 0.0, 0.0)


def onnx_session(onnx_path: Path, *, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...]]:
    """(batch -> first output, one input's shape) of an ONNX file on the CPU provider."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, all cores
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    run = session.run

    def predict(batch: np.ndarray) -> np.ndarray:
        return run(None, {feed.name: batch})[0]  # type: ignore[no-any-return]

    return predict, tuple(feed.shape[1:])


def fastest_runtime(
    model_path: Path,
    samples: np.ndarray,
    *,
    onnx_path: Path,
    threads: int = 1,
    try_onnx: bool = True,
    warm_batches: Sequence[int] = (1,),
) -> Choice:
    """Of the runtimes (Keras alone unless `try_onnx`), the fastest whose answers on
    `samples` (uint8 images of the model's size) are within TOLERANCE of Keras'. Keras
    itself is the reference and the fallback, so it is always loaded first. An ONNX
    Runtime that answers like Keras gets its check record written (see module doc)."""
    from trainer.ml.export import load_model

    model = load_model(model_path)  # once: the reference and the ONNX conversion are of the same file
    keras_runtime = tensorflow_runtime(
        model_path, image_shape=samples.shape[1:], warm_batches=warm_batches, model=model
    )
    expected = keras_runtime.predict(samples)
    candidates = [_timed(keras_runtime, samples[:1], 0.0)]
    tried = {"tensorflow": _ms(candidates[0].call_seconds)}
    if try_onnx:
        onnx, tried["onnxruntime"] = _equal_onnx(model, model_path, onnx_path, samples, expected, threads, warm_batches)
        if onnx is not None:
            candidates.append(_timed(onnx, samples[:1], onnx.max_difference))
            tried["onnxruntime"] = _ms(candidates[-1].call_seconds)
            _write_check(onnx_path, samples, expected, candidates[-1].call_seconds, candidates[0].call_seconds)
    return Choice(min(candidates, key=lambda runtime: runtime.call_seconds), tried)


def prepare_serving(model_path: Path, images: np.ndarray) -> None:
    """In the training worker, beside a just-saved `model.keras`: `model.onnx` and its
    check record on up to CHECK_IMAGES of `images` (the test split), when ONNX Runtime
    answers like Keras. Never fails the training: serving converts for itself then."""
    if not len(images):
        return
    try:
        done = prepare_onnx(model_path, np.ascontiguousarray(images[:CHECK_IMAGES]), model_path.parent / ONNX_FILE)
    except Exception:
        logger.exception("preparing %s for serving failed; web processes will convert it themselves", model_path)
        return
    logger.info("prepared for serving: %s", done)


def prepare_onnx(model_path: Path, samples: np.ndarray, onnx_path: Path) -> str:
    """Convert the model for ONNX Runtime and, if it answers `samples` like Keras, write
    the check record beside it, so that serving processes load it without TensorFlow.
    What happened, in words (a conversion that fails is no error: serving falls back)."""
    choice = fastest_runtime(model_path, samples, onnx_path=onnx_path)
    if not check_record_path(onnx_path).exists():
        onnx_path.unlink(missing_ok=True)  # no record, no use: serving converts and decides itself
    return ", ".join(f"{name}: {what}" for name, what in choice.tried.items())


def _equal_onnx(
    model: Any, model_path: Path, onnx_path: Path, samples: np.ndarray, expected: np.ndarray, threads: int,
    warm_batches: Sequence[int],
) -> tuple[Runtime | None, str]:  # fmt: skip
    from trainer.ml.export import write_onnx

    try:
        if not onnx_path.exists():
            write_onnx(model, onnx_path)  # from the Keras model fastest_runtime loaded, not the file again
        onnx = onnx_runtime(model_path, onnx_path, threads=threads, warm_batches=warm_batches)
        difference = float(np.max(np.abs(onnx.predict(samples) - expected)))
    except Exception as exc:  # a conversion or session that fails: serve with Keras
        logger.warning("ONNX Runtime not used for %s: %s", model_path.name, exc)
        return None, f"failed: {exc}"
    if difference > TOLERANCE:
        return None, f"differs from Keras by {difference:.1e}"
    return Runtime(onnx.name, onnx.predict, onnx.nbytes, difference, 0.0), ""


def checked_onnx_runtime(onnx_path: Path, *, threads: int = 1, warm_batches: Sequence[int] = (1,)) -> Runtime | None:
    """ONNX Runtime for a model it was chosen for before (by `fastest_runtime`, with the
    same libraries), checked again on the stored samples against Keras' stored
    answers; None when there is no such record or the answers now differ."""
    record = check_record_path(onnx_path)
    if not (record.exists() and onnx_path.exists()):
        return None
    try:
        with np.load(record) as stored:
            samples, expected = stored["samples"], stored["expected"]
            libraries, seconds = str(stored["libraries"]), float(stored["call_seconds"])
            keras_seconds = float(stored["keras_call_seconds"])
    except (OSError, ValueError, KeyError) as exc:  # a damaged record: check from scratch
        logger.warning("runtime check record %s unreadable: %s", record.name, exc)
        return None
    if libraries != _libraries() or seconds >= keras_seconds:
        return None  # other libraries, or Keras was faster where it was timed: decide here
    try:
        runtime = onnx_runtime(onnx_path, onnx_path, threads=threads, warm_batches=warm_batches)
    except Exception as exc:  # a damaged .onnx file: convert and check again from scratch
        logger.warning("%s does not load (%s): converting again", onnx_path.name, exc)
        onnx_path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        return None
    difference = float(np.max(np.abs(runtime.predict(samples) - expected)))
    if difference > TOLERANCE:
        logger.warning("ONNX Runtime now differs from Keras by %.1e on %s: checking again", difference, record.name)
        return None
    return Runtime(runtime.name, runtime.predict, runtime.nbytes, difference, seconds)


def check_record_path(onnx_path: Path) -> Path:
    """Where the check record of `onnx_path` lives (beside it)."""
    return onnx_path.with_name(onnx_path.name + ".check.npz")


def _libraries() -> str:
    return f"tensorflow {installed_version('tensorflow')}, onnxruntime {installed_version('onnxruntime')}"


def _write_check(onnx_path: Path, samples: np.ndarray, expected: np.ndarray, seconds: float,
                 keras_seconds: float) -> None:  # fmt: skip
    """Written under a temporary name and renamed: a reader never sees half of one."""
    record = check_record_path(onnx_path)
    partial = record.with_name(f".{record.name}.{os.getpid()}.partial.npz")
    np.savez(partial, samples=samples, expected=expected, libraries=_libraries(), call_seconds=seconds,
             keras_call_seconds=keras_seconds)  # fmt: skip
    partial.replace(record)


def _timed(runtime: Runtime, one: np.ndarray, difference: float) -> Runtime:
    seconds = []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        runtime.predict(one)
        seconds.append(time.perf_counter() - start)
    return Runtime(runtime.name, runtime.predict, runtime.nbytes, difference, statistics.median(seconds))


def _warm(predict: Predict, shape: tuple[Any, ...], batches: Sequence[int]) -> None:
    """Touch every kernel once per batch size, so the first request is not the slow one."""
    for batch in sorted(set(batches)):
        predict(np.zeros((batch, *shape), np.uint8))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms a call"
