"""Tiny generated images for tests: real encoded files, made in microseconds."""

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def encode(array: np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def colour_image(colour: str, seed: int, size: int = 16, fmt: str = "PNG") -> bytes:
    """A noisy square of one colour; every seed gives different bytes."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], dtype=np.int16)
    pixels = base + rng.integers(-25, 26, size=(size, size, 3))
    return encode(np.clip(pixels, 0, 255).astype(np.uint8), fmt)


def colour_items(per_class: int, classes: tuple[str, ...] = tuple(COLOURS)) -> list[tuple[str, bytes, str]]:
    """(file name, bytes, class) items for images_add()."""
    return [
        (f"{c}-{i}.png", colour_image(c, seed=i * 7 + n), c) for n, c in enumerate(classes) for i in range(per_class)
    ]


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def class_folder_zip(path: Path, per_class: int) -> Path:
    return write_zip(path, {f"{label}/{name}": data for name, data, label in colour_items(per_class)})


def write_tar(path: Path, entries: dict[str, bytes]) -> Path:
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def cifar_tarball(path: Path, per_batch: int = 4) -> Path:
    """A CIFAR-10 python tarball in the real layout, with `per_batch` images a batch."""
    import pickle

    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    files = {"cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": names}, protocol=2)}
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = {
            b"batch_label": batch.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
        }
        files[f"cifar-10-batches-py/{batch}"] = pickle.dumps(content, protocol=2)
    return write_tar(path, files)
