"""A trained model written in the formats other runtimes load (no Django here).

Every format takes what the `.keras` model takes, uint8 pixels (n, size, size, 3)
named "image", and answers float32 softmax probabilities (n, classes) named
"probabilities": preprocessing lives inside the model, so a client only decodes
and resizes. Each file is written under a temporary name, synced, then renamed:
a reader never sees half of one.
"""

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

import trainer.ml.layers  # noqa: F401  registers the custom layers saved in model files
from trainer.ml.files import fsync_path

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Opset 17 runs on onnxruntime 1.13 and later (2022) and is within what tf2onnx 1.17 converts to.
ONNX_OPSET = 17
SAVEDMODEL_ROOT = "saved_model"  # the folder inside the .zip


class ExportError(Exception):
    """Why a model cannot be written in a format, in words for the user."""


def export_file(source: Path, fmt: str, out: Path) -> None:
    """Write the `.keras` model at `source` as `fmt` (keras, savedmodel, tflite, onnx) to `out`."""
    if fmt == "keras":
        with atomic_output(out) as partial:
            shutil.copyfile(source, partial)
        return
    writer = WRITERS.get(fmt)
    if writer is None:
        raise ExportError(f"Unknown export format {fmt!r}; choose one of keras, {', '.join(WRITERS)}.")
    writer(load_model(source), out)


def load_model(path: Path) -> Any:
    # safe_mode: a model file never runs code of its own (no Lambda layers).
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def serving_function(model: Any) -> Callable[[Any], dict[str, Any]]:
    """The model in inference mode, with named input and output.

    `training=False` is spelled out because Keras' own `model.export()` calls the
    model without it: random augmentation layers (whose `training` defaults to
    True) then run at inference, and a flip-TTA model answered differently on
    every call."""
    return lambda image: {OUTPUT_NAME: model(image, training=False)}


def input_spec(model: Any) -> Any:
    """uint8 images of the model's size, any batch."""
    return tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.uint8, name=INPUT_NAME)


def write_savedmodel_dir(model: Any, directory: Path) -> None:
    """A SavedModel whose `serve` function and `serving_default` signature run the model."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serving_function(model), input_signature=[input_spec(model)])
    archive.write_out(str(directory), verbose=False)


def write_savedmodel(model: Any, out: Path) -> None:
    """The SavedModel folder zipped into one file (a download is one file)."""
    with tempfile.TemporaryDirectory(prefix="savedmodel-") as tmp:
        folder = Path(tmp) / SAVEDMODEL_ROOT
        write_savedmodel_dir(model, folder)
        with atomic_output(out) as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                archive.write(path, path.relative_to(tmp).as_posix())


def write_tflite(model: Any, out: Path) -> None:
    """Converted from the SavedModel with LiteRT's built-in ops only (no flex
    delegate): the input stays uint8, the weights float32 (no quantization)."""
    with tempfile.TemporaryDirectory(prefix="tflite-") as tmp:
        write_savedmodel_dir(model, Path(tmp))
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # ConverterError carries pages of MLIR: say which ops
            raise ExportError(f"TFLite conversion failed: {_unsupported_tflite_ops(str(exc))}") from exc
    with atomic_output(out) as partial:
        partial.write_bytes(flatbuffer)


def _unsupported_tflite_ops(message: str) -> str:
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)))
    if ops:
        return f"LiteRT has no built-in kernel for {', '.join(ops)}."
    return message.strip().splitlines()[0][:500] if message.strip() else "unknown converter error"


def write_onnx(model: Any, out: Path) -> None:
    """Converted by tf2onnx from a frozen graph of the serving function.

    Not `model.export(format="onnx")`: besides the training flag (see
    serving_function) it lists the constants of a Normalization layer as extra
    graph inputs, so the resnet's file asks for inputs no client has."""
    import onnx
    import tf2onnx

    concrete = tf.function(serving_function(model), input_signature=[input_spec(model)]).get_concrete_function()
    inputs, outputs = [f"{INPUT_NAME}:0"], [concrete.structured_outputs[OUTPUT_NAME].name]
    graph = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
    with atomic_output(out) as partial:
        proto, _ = tf2onnx.convert.from_graph_def(
            graph,
            name=model.name,
            input_names=inputs,
            output_names=outputs,
            opset=ONNX_OPSET,
            tensors_to_rename={inputs[0]: INPUT_NAME, outputs[0]: OUTPUT_NAME},
            output_path=str(partial),
        )
        try:  # tf2onnx keeps ops it cannot convert and writes a file no runtime opens
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"ONNX conversion failed: {str(exc).strip().splitlines()[0][:500]}") from exc


WRITERS: dict[str, Callable[[Any, Path], None]] = {
    "savedmodel": write_savedmodel,
    "tflite": write_tflite,
    "onnx": write_onnx,
}


@contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed to `out` (after an fsync) when the block
    succeeds and removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        yield partial
        fsync_path(partial)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    fsync_path(out.parent)  # the rename itself survives a crash
