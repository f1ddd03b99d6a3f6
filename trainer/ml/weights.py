"""ImageNet weights for the pretrained backbones, from Keras' cache ($KERAS_HOME/models).

Workers never download during a job: a missing file fails the job at once with
the command that installs it (`manage.py fetch_weights`, on a connected host or
from a folder of files).
"""

import os
import shutil
from pathlib import Path

from trainer.ml.config import BACKBONES

# Keras' file names for the 224 px ImageNet checkpoints without the classifier head.
# Their tensor shapes do not depend on the input size, so they serve every size.
WEIGHT_FILES = {
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "mobilenetv2_035": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    "mobilenet": "mobilenet_2_5_224_tf_no_top.h5",
    "efficientnetb0": "efficientnetb0_notop.h5",
}


class WeightsMissing(RuntimeError):
    """The backbone's weight file is not in the cache; the message says how to install it."""


def cache_dir() -> Path:
    # Keras reads KERAS_HOME once, at import; the settings module sets it for workers.
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def weights_path(arch: str) -> Path:
    """The installed weight file for `arch`, or WeightsMissing saying how to get it."""
    path = cache_dir() / WEIGHT_FILES[arch]
    if not path.is_file() or path.stat().st_size == 0:
        raise WeightsMissing(
            f"ImageNet weights for {arch} are not installed: {path} is missing. On a host with internet "
            f"access run `python manage.py fetch_weights {arch}`; offline, copy {WEIGHT_FILES[arch]} into "
            f"{path.parent} (or run `python manage.py fetch_weights --from DIR`)."
        )
    return path


def install_from(folder: Path, archs: list[str]) -> list[Path]:
    """Copy the weight files of `archs` found in `folder` into the cache (no network)."""
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for arch in archs:
        source = folder / WEIGHT_FILES[arch]
        if source.is_file():
            temporary = target / f".{source.name}.part"
            shutil.copyfile(source, temporary)
            temporary.replace(target / source.name)  # never a half-copied file under the real name
            copied.append(target / source.name)
    return copied


def download(arch: str) -> Path:
    """Let Keras download the weights into its cache (needs internet access)."""
    import keras

    application, alpha, _ = BACKBONES[arch]
    kwargs = {"alpha": alpha} if application.startswith("MobileNet") else {}
    getattr(keras.applications, application)(input_shape=(224, 224, 3), include_top=False, weights="imagenet", **kwargs)
    return weights_path(arch)
