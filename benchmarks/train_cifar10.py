"""The seed's baseline CNN on CIFAR-10: through the platform's trainer vs the plain Keras script.

Both train on the same 45,000 images (5,000 held out for validation) and are tested
on the official 10,000 test images. Prints test accuracy and wall time of each, and
the time ratio platform/script (target: within 1.1x).

    CIFAR10_TARBALL=../shared/datasets/cifar10/cifar-10-python.tar.gz python benchmarks/train_cifar10.py [--epochs 10]
"""

import argparse
import os
import pickle
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_TARBALL = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10/cifar-10-python.tar.gz"


def load_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    batches: dict[str, dict[bytes, object]] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if name.startswith(("data_batch_", "test_batch", "batches.meta")):
                # The local, trusted file only: never unpickle an upload.
                batches[name] = pickle.load(archive.extractfile(member), encoding="bytes")

    def arrays(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = (
            np.concatenate([np.asarray(batches[n][b"data"]) for n in names])
            .reshape(-1, 3, 32, 32)
            .transpose(0, 2, 3, 1)
        )
        y = np.concatenate([np.asarray(batches[n][b"labels"]) for n in names])
        return x.astype(np.uint8), y.astype(np.int64)

    x_train, y_train = arrays([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = arrays(["test_batch"])
    classes = [c.decode() for c in batches["batches.meta"][b"label_names"]]  # type: ignore[union-attr]
    return x_train, y_train, x_test, y_test, classes


def seed_script(x_train, y_train, x_val, y_val, x_test, y_test, epochs: int) -> tuple[float, float]:
    """The notebook's code, as it was written: floats in [0, 1], model.fit on arrays."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dropout(0.5), layers.Dense(10),
    ])  # fmt: skip
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train / 255.0, y_train, epochs=epochs, batch_size=64, validation_data=(x_val / 255.0, y_val), verbose=0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test / 255.0, y_test, verbose=0)
    return float(accuracy), seconds


def platform(x_train, y_train, x_val, y_val, x_test, y_test, classes, epochs: int) -> tuple[float, float]:
    from trainer.ml.config import TrainConfig
    from trainer.ml.train import Split, TrainData, train

    data = TrainData(classes, Split(x_train, y_train), Split(x_val, y_val), Split(x_test, y_test))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = train(TrainConfig(arch="baseline", epochs=epochs, batch_size=64), data, Path(out))
        seconds = time.perf_counter() - start  # includes the test evaluation and saving the model
    return float(result.metrics["accuracy"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    tarball = Path(os.environ.get("CIFAR10_TARBALL", DEFAULT_TARBALL))
    if not tarball.is_file():
        sys.exit(f"CIFAR-10 not found at {tarball}: set CIFAR10_TARBALL to cifar-10-python.tar.gz")
    x, y, x_test, y_test, classes = load_cifar10(tarball)
    split = (x[:45000], y[:45000], x[45000:], y[45000:], x_test, y_test)
    ref_acc, ref_s = seed_script(*split, epochs=args.epochs)
    print(f"seed script   : test accuracy {ref_acc:.4f}  train time {ref_s:6.1f} s")
    acc, s = platform(*split, classes, epochs=args.epochs)
    print(f"platform      : test accuracy {acc:.4f}  train time {s:6.1f} s")
    print(f"time ratio platform/script: {s / ref_s:.3f}  (target <= 1.10); accuracy delta {acc - ref_acc:+.4f}")


if __name__ == "__main__":
    main()
