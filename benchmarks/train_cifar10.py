"""CIFAR-10 through the platform's trainer, each figure beside a reference measured in the same run.

    export CIFAR10_TARBALL=../shared/datasets/cifar10/cifar-10-python.tar.gz
    python benchmarks/train_cifar10.py baseline            # seed CNN: platform vs the plain Keras script
    python benchmarks/train_cifar10.py resnet --size small --epochs 1 --batch-size 128 --learning-rate 0.2 \
        --target 0.6745 --budget 30
    python benchmarks/train_cifar10.py resnet --size medium --epochs 10 --target 0.90 --budget 900
    python benchmarks/train_cifar10.py transfer --per-class 300   # mobilenetv2 vs resnet on a small split

All train on the same 45,000 images (5,000 held out for validation) and test on the
official 10,000 test images, except `transfer`, which takes the first N training
images of each class. "Training time" is the time inside model.fit (it includes the
per-epoch validation, as the seed script's does), not loading, evaluation or saving.
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


def platform(config, x_train, y_train, x_val, y_val, x_test, y_test, classes) -> tuple[float, float, float]:
    """(test accuracy, training seconds, total seconds) of one platform run."""
    from trainer.ml.device import cpu_has_bf16
    from trainer.ml.train import Split, TrainData, train

    data = TrainData(classes, Split(x_train, y_train), Split(x_val, y_val), Split(x_test, y_test))
    config = config.resolve(on_gpu=_on_gpu(), class_counts=data.class_counts(), cpu_bf16=cpu_has_bf16())
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = train(config, data, Path(out), on_gpu=_on_gpu())
        total = time.perf_counter() - start  # includes the test evaluation and saving the model
    return float(result.metrics["accuracy"]), result.train_seconds, total


def _on_gpu() -> bool:
    from trainer.ml.device import configure_devices

    return configure_devices() != "CPU"


def bench_baseline(args, split, classes) -> None:
    from trainer.ml.config import TrainConfig

    ref_acc, ref_s = seed_script(*split, epochs=args.epochs)
    print(f"seed script   : test accuracy {ref_acc:.4f}  train time {ref_s:6.1f} s")
    config = TrainConfig.from_dict({"arch": "baseline", "epochs": args.epochs})
    acc, train_s, total_s = platform(config, *split, classes)
    print(
        f"platform      : test accuracy {acc:.4f}  train time {train_s:6.1f} s"
        f"  (with evaluation and saving {total_s:.1f} s)"
    )
    print(
        f"time ratio platform/script: {train_s / ref_s:.3f} training, {total_s / ref_s:.3f} with evaluation and saving "
        f"(target <= 1.10); accuracy delta {acc - ref_acc:+.4f}"
    )


def bench_resnet(args, split, classes) -> None:
    from trainer.ml.config import TrainConfig

    given = {"arch": "resnet", "size": args.size, "epochs": args.epochs}
    if args.batch_size:
        given["batch_size"] = args.batch_size
    if args.learning_rate:
        given["learning_rate"] = args.learning_rate
    config = TrainConfig.from_dict(given)
    acc, train_s, total_s = platform(config, *split, classes)
    verdict = "met" if acc >= args.target and train_s <= args.budget else "NOT met"
    print(
        f"resnet {args.size}, {args.epochs} epochs: test accuracy {acc:.4f} after {train_s:.1f} s of training "
        f"({total_s:.1f} s with evaluation and saving)"
    )
    print(f"target {args.target:.2%} in under {args.budget:g} s: {verdict}")
    ref_acc, ref_s = seed_script(*split, epochs=10)
    print(f"reference, the seed script (baseline CNN, 10 epochs): test accuracy {ref_acc:.4f} after {ref_s:.1f} s")
    print(f"resnet/seed: accuracy {acc - ref_acc:+.4f}, training time ratio {train_s / ref_s:.2f}")


def bench_transfer(args, split, classes) -> None:
    """A small real dataset: the first N photos of each class, larger images for the backbone."""
    from trainer.ml.config import TrainConfig

    x_train, y_train, _, _, x_test, y_test = split
    rng = np.random.default_rng(0)
    train_idx = np.concatenate([np.flatnonzero(y_train == c)[: args.per_class] for c in range(10)])
    val_idx = np.concatenate([np.flatnonzero(y_train == c)[args.per_class : args.per_class + 50] for c in range(10)])
    test_idx = rng.permutation(len(y_test))[: args.test_images]
    small = (
        x_train[train_idx],
        y_train[train_idx],
        x_train[val_idx],
        y_train[val_idx],
        x_test[test_idx],
        y_test[test_idx],
    )
    print(
        f"split: {len(train_idx)} train ({args.per_class} per class), {len(val_idx)} val, {len(test_idx)} test images"
    )

    scratch = TrainConfig.from_dict({"arch": "resnet", "epochs": args.scratch_epochs})
    acc, train_s, _ = platform(scratch, *small, classes)
    print(
        f"reference, resnet from scratch at 32 px ({args.scratch_epochs} epochs):"
        f" test accuracy {acc:.4f}, {train_s:.1f} s"
    )

    size = args.image_size
    big = tuple(_resize(a, size) if a.ndim == 4 else a for a in small)
    pretrained = TrainConfig.from_dict({"arch": args.arch, "image_size": size})
    t_acc, t_train_s, _ = platform(pretrained, *big, classes)
    print(
        f"{args.arch} (ImageNet weights) at {size} px, {pretrained.epochs} head + {pretrained.fine_tune_epochs} "
        f"fine-tune epochs: test accuracy {t_acc:.4f}, {t_train_s:.1f} s"
    )
    print(f"transfer - scratch: {t_acc - acc:+.4f} accuracy")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    baseline = sub.add_parser("baseline")
    baseline.add_argument("--epochs", type=int, default=10)
    resnet = sub.add_parser("resnet")
    resnet.add_argument("--size", default="auto", choices=["auto", "small", "medium", "large"])
    resnet.add_argument("--epochs", type=int, default=10)
    resnet.add_argument("--batch-size", type=int, default=0)
    resnet.add_argument("--learning-rate", type=float, default=0)
    resnet.add_argument("--target", type=float, default=0.90, help="test accuracy to reach")
    resnet.add_argument("--budget", type=float, default=900, help="seconds of training allowed")
    transfer = sub.add_parser("transfer")
    transfer.add_argument("--arch", default="mobilenetv2")
    transfer.add_argument("--per-class", type=int, default=300)
    transfer.add_argument("--test-images", type=int, default=2000)
    transfer.add_argument("--image-size", type=int, default=96)
    transfer.add_argument("--scratch-epochs", type=int, default=30)
    args = parser.parse_args()
    tarball = Path(os.environ.get("CIFAR10_TARBALL", DEFAULT_TARBALL))
    if not tarball.is_file():
        sys.exit(f"CIFAR-10 not found at {tarball}: set CIFAR10_TARBALL to cifar-10-python.tar.gz")
    x, y, x_test, y_test, classes = load_cifar10(tarball)
    split = (x[:45000], y[:45000], x[45000:], y[45000:], x_test, y_test)
    {"baseline": bench_baseline, "resnet": bench_resnet, "transfer": bench_transfer}[args.bench](args, split, classes)


if __name__ == "__main__":
    main()
