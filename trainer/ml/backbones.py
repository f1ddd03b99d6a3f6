"""The catalogue of pretrained backbones, and the files that make one usable here.

Two kinds (no Django here; TensorFlow loads only inside `feature_extractor`):

- keras.applications backbones, whose ImageNet weights live in Keras' cache
  ($KERAS_HOME/models) under the name Keras gives them. Where Keras publishes a
  hash for a file (every family but the MobileNets), a copied file must match it.
- Backbone files an operator trusts (`.keras`, installed with `fetch_weights
  --install`): the file, with a manifest saying its feature layer, input size and
  whether preprocessing is built in, under $KERAS_HOME/backbones. EfficientNet-Lite0
  is catalogued that way with the SHA-256 of the one file we know, so
  `fetch_weights --from DIR` installs it like the others.

`ms_per_image` figures are measured on this project's 2-core development machine
(batch 32, at the backbone's own size; `benchmarks/backbone_speed.py` reprints
them); they help people choose, and `auto` keeps a CPU's feature pass in budget.
"""

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.ml.files import file_digest, sha256_file

# How a backbone wants its 0-255 pixels: "unit" is (x / 127.5) - 1 (MobileNets,
# ResNetV2); "builtin" means the model rescales itself (EfficientNets, ConvNeXt).
PREPROCESSING = ("unit", "builtin")
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
MANIFEST_SUFFIX = ".json"


class WeightsMissing(RuntimeError):
    """The backbone's weight file is not installed; the message says how to install it."""


class BackboneFileRefused(ValueError):
    """A weight or backbone file does not match what it claims to be."""


@dataclass(frozen=True)
class Backbone:
    name: str  # what configs and the `train --arch` option call it
    title: str
    image_size: int  # the resolution its ImageNet weights were trained at
    preprocessing: str
    feature_dim: int
    top1: float | None = None  # ImageNet top-1 accuracy (%), as its authors published it
    ms_per_image: float | None = None  # measured here, see the module docstring
    # keras.applications backbones
    application: str = ""
    alpha: float | None = None  # MobileNets' width multiplier
    weight_file: str = ""  # the name Keras' cache knows it by
    url: str = ""
    keras_hash: str = ""  # Keras' published md5 (32 hex) or SHA-256 (64 hex); "" where Keras has none
    # backbone files (.keras)
    feature_layer: str = ""
    sha256: str = ""  # pinned for catalogued files; recorded at install for the others
    source_file: str = ""  # the file name `fetch_weights --from` looks for

    @property
    def is_file(self) -> bool:
        return not self.application

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _app(name: str, title: str, application: str, size: int, prep: str, dim: int, top1: float, ms: float | None,
         weight_file: str, folder: str, keras_hash: str = "", alpha: float | None = None) -> Backbone:  # fmt: skip
    return Backbone(name=name, title=title, image_size=size, preprocessing=prep, feature_dim=dim, top1=top1,
                    ms_per_image=ms, application=application, alpha=alpha, weight_file=weight_file,
                    url=f"{folder if folder.startswith('https://') else KERAS_URL + folder}/{weight_file}",
                    keras_hash=keras_hash)  # fmt: skip


# Hashes as Keras 3.15 publishes them (keras/src/applications/*.py); a test holds them equal.
CATALOGUE: dict[str, Backbone] = {b.name: b for b in [
    _app("mobilenetv2", "MobileNetV2 1.0", "MobileNetV2", 224, "unit", 1280, 71.3, 7.9,
         "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", "mobilenet_v2", alpha=1.0),
    _app("mobilenetv2_035", "MobileNetV2 0.35", "MobileNetV2", 224, "unit", 1280, 60.3, 3.5,
         "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5", "mobilenet_v2", alpha=0.35),
    _app("mobilenet", "MobileNet 0.25", "MobileNet", 224, "unit", 256, 49.8, 1.7,
         "mobilenet_2_5_224_tf_no_top.h5", "mobilenet_v1", alpha=0.25),
    _app("efficientnetb0", "EfficientNet-B0", "EfficientNetB0", 224, "builtin", 1280, 77.1, 11.3,
         "efficientnetb0_notop.h5", "https://storage.googleapis.com/keras-applications",
         "50bc09e76180e00e4465e1a485ddc09d"),
    _app("efficientnetv2b0", "EfficientNetV2-B0", "EfficientNetV2B0", 224, "builtin", 1280, 78.7, 9.8,
         "efficientnetv2-b0_notop.h5", "efficientnet_v2", "893217f2bb855e2983157299931e43ff"),
    _app("efficientnetv2b1", "EfficientNetV2-B1", "EfficientNetV2B1", 240, "builtin", 1280, 79.8, 14.7,
         "efficientnetv2-b1_notop.h5", "efficientnet_v2", "0e80663031ca32d657f9caa404b6ec37"),
    _app("efficientnetv2b2", "EfficientNetV2-B2", "EfficientNetV2B2", 260, "builtin", 1408, 80.5, 20.0,
         "efficientnetv2-b2_notop.h5", "efficientnet_v2", "1dfe2e7a5d45b6632553a8961ea609eb"),
    _app("efficientnetv2b3", "EfficientNetV2-B3", "EfficientNetV2B3", 300, "builtin", 1536, 82.0, 36.2,
         "efficientnetv2-b3_notop.h5", "efficientnet_v2", "f6abf7b5849ac99a89b50dd3fd532856"),
    _app("convnexttiny", "ConvNeXt-Tiny", "ConvNeXtTiny", 224, "builtin", 768, 81.3, 279.0,
         "convnext_tiny_notop.h5", "convnext",
         "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
    _app("resnet50v2", "ResNet50V2", "ResNet50V2", 224, "unit", 2048, 76.0, 35.0,
         "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet",
         "fac2f116257151a9d068a22e544a4917"),
    Backbone(name="efficientnet_lite0", title="EfficientNet-Lite0", image_size=224, preprocessing="builtin",
             feature_dim=1280, top1=75.1, ms_per_image=8.5, feature_layer="avg_pool",
             sha256="33316e116fb5849d57e7bb8704833b307caaae7b5ae1f4a8e8e67893a85a4b35",
             source_file="efficientnet_lite0_imagenet.keras"),
]}  # fmt: skip


# Names an installed file may not take: the catalogue's and the other recipes'.
RESERVED = {"auto", "resnet", "baseline", *CATALOGUE}


def keras_home() -> Path:
    # Keras reads KERAS_HOME once, at import; the settings module sets it for every process.
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def cache_dir() -> Path:
    """Keras' cache of keras.applications weights."""
    return keras_home() / "models"


def files_dir() -> Path:
    """Installed backbone files and their manifests."""
    return keras_home() / "backbones"


def installed_files() -> dict[str, Backbone]:
    """Backbone files installed with a manifest, by name (catalogued or not)."""
    found: dict[str, Backbone] = {}
    for manifest in sorted(files_dir().glob(f"*{MANIFEST_SUFFIX}")):
        try:
            backbone = Backbone(**json.loads(manifest.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a broken manifest is as good as none; `fetch_weights --list` shows what is there
        found[backbone.name] = backbone
    return found


def known() -> dict[str, Backbone]:
    """Every backbone a config may name: the catalogue and the operator's own files."""
    return {**CATALOGUE, **installed_files()}


def get(name: str) -> Backbone:
    try:
        return known()[name]
    except KeyError:
        raise WeightsMissing(f"no backbone named {name!r}; `manage.py fetch_weights --list` shows them") from None


def weight_path(backbone: Backbone) -> Path:
    """Where the backbone's file lives once installed."""
    if backbone.is_file:
        return files_dir() / f"{backbone.name}.keras"
    return cache_dir() / backbone.weight_file


def is_installed(backbone: Backbone) -> bool:
    path = weight_path(backbone)
    present = path.is_file() and path.stat().st_size > 0
    return present and (not backbone.is_file or (files_dir() / f"{backbone.name}{MANIFEST_SUFFIX}").is_file())


def installed_path(backbone: Backbone) -> Path:
    """The installed file, or WeightsMissing saying how to install it."""
    if is_installed(backbone):
        return weight_path(backbone)
    source = backbone.source_file or backbone.weight_file or f"{backbone.name}.keras"
    raise WeightsMissing(
        f"ImageNet weights for {backbone.name} are not installed: {weight_path(backbone)} is missing. "
        f"On a host with internet access run `python manage.py fetch_weights {backbone.name}`; offline, "
        f"run `python manage.py fetch_weights --from DIR` with {source} in DIR."
        if not backbone.is_file or backbone.sha256
        else f"The backbone file {backbone.name} is not installed; install it with `fetch_weights --install`."
    )


def installed() -> list[Backbone]:
    return [b for b in known().values() if is_installed(b)]


def table() -> list[dict[str, Any]]:
    """One row per known backbone (catalogue first, then the operator's own files)."""
    return [row(b) for b in known().values()]


def row(backbone: Backbone) -> dict[str, Any]:
    path = weight_path(backbone)
    installed = is_installed(backbone)
    size = path.stat().st_size if installed else None
    return {
        "name": backbone.name,
        "title": backbone.title,
        "kind": "file" if backbone.is_file else "keras.applications",
        "installed": installed,
        "size_bytes": size,
        "size_mb": round(size / 1e6, 1) if size is not None else None,
        "top1": backbone.top1,
        "feature_dim": backbone.feature_dim,
        "image_size": backbone.image_size,
        "ms_per_image": backbone.ms_per_image,
        "path": str(path),
        "file": path.name,
    }


def check_file(backbone: Backbone, path: Path) -> None:
    """Refuse a file that is not the one the catalogue names (Keras' hash, or our SHA-256)."""
    expected = backbone.sha256 if backbone.is_file else backbone.keras_hash
    if not expected:
        return  # Keras publishes no hash for the MobileNets: any file of that name is taken, as Keras does
    algorithm = "sha256" if len(expected) == 64 else "md5"
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise BackboneFileRefused(
            f"{path} is not the published {backbone.title} file: its {algorithm} is {actual}, expected {expected}"
        )


@dataclass(frozen=True)
class Installed:
    backbone: Backbone
    path: Path
    notes: list[str] = field(default_factory=list)


def install_copy(backbone: Backbone, source: Path) -> Installed:
    """Copy a checked file into place: under a temporary name, then renamed, so a
    half-copied file never carries the real name."""
    check_file(backbone, source)
    target = weight_path(backbone)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    with source.open("rb") as src, partial.open("wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    partial.replace(target)
    if backbone.is_file:
        recorded = Backbone(**{**backbone.to_dict(), "sha256": sha256_file(target)})
        _write_manifest(recorded)
        backbone = recorded
    return Installed(backbone, target)


def _write_manifest(backbone: Backbone) -> None:
    manifest = files_dir() / f"{backbone.name}{MANIFEST_SUFFIX}"
    partial = manifest.with_name(f".{manifest.name}.part")
    partial.write_text(json.dumps(backbone.to_dict(), indent=2))
    partial.replace(manifest)


def describe_file(
    *, name: str, path: Path, feature_layer: str, image_size: int, builtin_preprocessing: bool, title: str = ""
) -> Backbone:
    """A catalogue entry for an operator's own `.keras` backbone; checked by loading
    it (safe mode: no code in the file runs) and finding the feature layer."""
    if not name.replace("_", "").isalnum() or not name[:1].isalpha() or name in RESERVED or len(name) > 40:
        raise BackboneFileRefused(
            f"backbone name {name!r}: use letters, digits and underscores, starting with a letter, "
            "and not a catalogue name or auto, resnet, baseline"
        )
    if not 32 <= image_size <= 1024:
        raise BackboneFileRefused(f"image size {image_size}: must be between 32 and 1024")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise BackboneFileRefused(f"{path} is not a .keras model file (Keras 3's zip format)")
    dim = _feature_dim(path, feature_layer, image_size)
    return Backbone(name=name, title=title or name, image_size=image_size,
                    preprocessing="builtin" if builtin_preprocessing else "unit", feature_dim=dim,
                    feature_layer=feature_layer, source_file=path.name)  # fmt: skip


def _feature_dim(path: Path, feature_layer: str, image_size: int) -> int:
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many kinds for a file it cannot read
        raise BackboneFileRefused(f"{path} is not a Keras model file this site can load safely: {exc}") from exc
    try:
        output = model.get_layer(feature_layer).output
    except ValueError as exc:
        raise BackboneFileRefused(f"{path} has no layer named {feature_layer!r}") from exc
    side = tuple(model.input.shape[1:3])
    if side not in ((None, None), (image_size, image_size)) or model.input.shape[-1] != 3:
        raise BackboneFileRefused(
            f"{path} takes {tuple(model.input.shape[1:])} inputs, not {image_size}x{image_size} RGB"
        )
    return int(output.shape[-1])


def feature_extractor(backbone: Backbone, image_size: int) -> Any:
    """A Keras model from float 0-255 pixels (n, size, size, 3) to pooled features
    (n, feature_dim), with the backbone's own preprocessing inside, frozen."""
    import keras
    from keras import layers

    path = installed_path(backbone)
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="pixels")
    x = inputs
    if backbone.preprocessing == "unit":
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(x)
    base = _base(backbone, path, image_size)
    base.trainable = False
    x = base(x, training=False)
    if len(x.shape) == 4:  # a feature map: average it, as keras.applications' pooling="avg" does
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name=f"{backbone.name}_features")


def _base(backbone: Backbone, path: Path, image_size: int) -> Any:
    import keras

    if backbone.is_file:
        full = keras.saving.load_model(path, compile=False, safe_mode=True)
        return keras.Model(full.input, full.get_layer(backbone.feature_layer).output, name=backbone.name)
    kwargs: dict[str, Any] = {"alpha": backbone.alpha} if backbone.alpha is not None else {}
    application = getattr(keras.applications, backbone.application)
    base = application(input_shape=(image_size, image_size, 3), include_top=False, weights=None, **kwargs)
    base.load_weights(str(path))  # by path: Keras' own lookup would pick a per-size file name
    return base
