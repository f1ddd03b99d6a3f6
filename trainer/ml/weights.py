"""Installing backbone files (see trainer.ml.backbones for the catalogue).

Workers never download during a job: a missing file fails the job at once with
the command that installs it (`manage.py fetch_weights`, on a connected host or
from a folder of files).
"""

from pathlib import Path

from trainer.ml.backbones import (
    Backbone,
    BackboneFileRefused,
    Installed,
    WeightsMissing,
    cache_dir,
    describe_file,
    install_copy,
    installed_path,
    keras_home,
)

__all__ = ["BackboneFileRefused", "WeightsMissing", "cache_dir", "download", "install_file", "install_from"]


def source_name(backbone: Backbone) -> str:
    """The file name `install_from` looks for in a folder."""
    return backbone.source_file or backbone.weight_file


def install_from(folder: Path, backbones: list[Backbone]) -> list[Installed]:
    """Copy the files of `backbones` found in `folder` into place (no network),
    each checked against its published hash first."""
    return [install_copy(b, folder / source_name(b)) for b in backbones if (folder / source_name(b)).is_file()]


def install_file(
    *, path: Path, name: str, feature_layer: str, image_size: int, builtin_preprocessing: bool, title: str = ""
) -> Installed:
    """Install an operator's own `.keras` backbone under `name`."""
    backbone = describe_file(
        name=name,
        path=path,
        feature_layer=feature_layer,
        image_size=image_size,
        builtin_preprocessing=builtin_preprocessing,
        title=title,
    )
    return install_copy(backbone, path)


def download(backbone: Backbone) -> Path:
    """Let Keras download the weights into its cache, checking its published hash
    (needs internet access)."""
    if backbone.is_file:
        raise WeightsMissing(f"{backbone.title} has no download: install its file with `fetch_weights --from DIR`")
    from keras.utils import get_file

    # cache_dir named: Keras read KERAS_HOME once at import, the catalogue reads it now.
    get_file(backbone.weight_file, backbone.url, cache_dir=str(keras_home()), cache_subdir="models",
             file_hash=backbone.keras_hash or None)  # fmt: skip
    return installed_path(backbone)
