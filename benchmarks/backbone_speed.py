"""Forward-pass time per image of every catalogued backbone, beside MobileNetV2's
in the same run (the figures behind the catalogue's `ms_per_image`).

    KERAS_HOME=$(mktemp -d) SHARED_WEIGHTS_DIR=../shared/weights/models .venv/bin/python benchmarks/backbone_speed.py
    .venv/bin/python benchmarks/backbone_speed.py mobilenetv2 efficientnetv2b0 --batch 16

keras.applications backbones are built with `weights=None`: the time does not depend
on the weights, so nothing is downloaded. A backbone file is timed from its installed
copy, or from `$SHARED_WEIGHTS_DIR/<its source file>`, and skipped when neither is
there. Each backbone runs at its native resolution, called as feature extraction
calls it (`model(x, training=False)` on float pixels, batch 32): once to warm up,
then the best of 3. `--compiled` adds the same call inside one `tf.function`
(traced in the warm-up), to tell per-call overhead from compute. ConvNeXt is slow
either way on a CPU: its depthwise convolutions are grouped `Conv2D`s, which Keras'
TensorFlow backend runs through XLA there.

Other work on the machine skews the absolute figures more than the ratios: run it
on an otherwise idle machine.
"""

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.ml.backbones import CATALOGUE, Backbone, is_installed, weight_path

REFERENCE = "mobilenetv2"


def file_source(backbone: Backbone) -> Path | None:
    """The backbone file to time: the installed one, else the shared copy."""
    if is_installed(backbone):
        return weight_path(backbone)
    shared = os.environ.get("SHARED_WEIGHTS_DIR")
    candidate = Path(shared) / backbone.source_file if shared and backbone.source_file else None
    return candidate if candidate and candidate.is_file() else None


def build(backbone: Backbone) -> Any | None:
    """The backbone up to its pooled features, or None when a file backbone has no file here."""
    import keras

    size = backbone.image_size
    if backbone.is_file:
        path = file_source(backbone)
        if path is None:
            return None
        full = keras.saving.load_model(path, compile=False, safe_mode=True)
        return keras.Model(full.input, full.get_layer(backbone.feature_layer).output)
    kwargs: dict[str, Any] = {"alpha": backbone.alpha} if backbone.alpha is not None else {}
    application = getattr(keras.applications, backbone.application)
    return application(input_shape=(size, size, 3), include_top=False, weights=None, pooling="avg", **kwargs)


def ms_per_image(call: Any, size: int, batch: int, repeats: int) -> float:
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    np.asarray(call(x))  # warm-up: first-call tracing and oneDNN kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(call(x))  # np.asarray waits for the result
        best = min(best, time.perf_counter() - start)
    return best / batch * 1000


def eager(model: Any) -> Any:
    return lambda x: model(x, training=False)  # as trainer.ml.features.extract calls it


def graph(model: Any) -> Any:
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False))


def row(backbone: Backbone, args: argparse.Namespace, reference: dict[str, float]) -> str:
    """One table line; the first backbone timed sets `reference` for the ratios."""
    import keras

    model = build(backbone)
    if model is None:
        return f"{backbone.name:<20} {backbone.image_size:>4}  skipped: no {backbone.source_file} installed or shared"
    line = f"{backbone.name:<20} {backbone.image_size:>4} {model.count_params() / 1e6:>7.1f}M"
    for kind, wrap in [("eager", eager), ("graph", graph)][: 2 if args.compiled else 1]:
        ms = ms_per_image(wrap(model), backbone.image_size, args.batch, args.repeats)
        line += f" {ms:>10.1f} {ms / reference.setdefault(kind, ms):>14.2f}x"
    keras.backend.clear_session()  # one model's graphs and memory at a time
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"catalogue names; default: all of them ({REFERENCE} always runs)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compiled", action="store_true", help="also time the call inside a tf.function")
    args = parser.parse_args()
    if unknown := [n for n in args.names if n not in CATALOGUE]:
        parser.error(f"not in the catalogue: {', '.join(unknown)}")
    names = [REFERENCE, *[n for n in (args.names or CATALOGUE) if n != REFERENCE]]

    import keras

    print(f"keras {keras.__version__}, {os.cpu_count()} CPUs, batch {args.batch}, best of {args.repeats}")
    columns = [("ms/image", f"vs {REFERENCE}"), ("tf.function", f"vs {REFERENCE}")][: 2 if args.compiled else 1]
    print(f"{'backbone':<20} {'px':>4} {'params':>8}" + "".join(f" {a:>10} {b:>15}" for a, b in columns))
    reference: dict[str, float] = {}
    for name in names:
        print(row(CATALOGUE[name], args, reference), flush=True)


if __name__ == "__main__":
    main()
