"""The `auto` recipe through the whole platform, beside references measured in the same run.

    python benchmarks/photos.py caltech                  # ../shared/datasets/caltech101_10class
    python benchmarks/photos.py cifar --per-class 300    # CIFAR-10 subsets (300 or 5000 per class)
    python benchmarks/photos.py cifar --per-class 5000

Each run imports the data into a fresh site (SQLite, files in a temporary folder),
installs the backbones in ../shared/weights/models (or SHARED_WEIGHTS_DIR), and runs
`train DATASET` with nothing changed, in this process: the time printed is from
pressing Train (the job row) to the stored model, feature pass included. Then:

- a second `auto` job on the same snapshot (features from the cache);
- the floor the recipe must beat: a scikit-learn logistic regression (standardised
  inputs, default C) on the same frozen features of the same train split, scored on
  the same test split;
- for CIFAR-10, the from-scratch `resnet` on the same snapshot (when `auto` chose
  `resnet` itself, the same run stands for both and says so).
"""

import argparse
import io
import os
import secrets
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def configure(work: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="classifier_site.settings",
        VAR_DIR=str(work / "var"),
        DATABASE_URL=f"sqlite:///{work / 'db.sqlite3'}",
        MEDIA_ROOT=str(work / "media"),
        CACHE_URL=f"filecache://{work / 'cache'}",
        CELERY_BROKER_URL=f"sqla+sqlite:///{work / 'broker.sqlite3'}",
        TRAIN_WORK_DIR=str(work / "training"),
        KERAS_HOME=str(work / "keras"),
        SECRET_KEY=secrets.token_urlsafe(50),
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def install_backbones() -> list[str]:
    from trainer.ml.backbones import CATALOGUE
    from trainer.ml.weights import install_from

    folder = Path(os.environ.get("SHARED_WEIGHTS_DIR", SHARED / "weights/models"))
    if not folder.is_dir():
        sys.exit(f"no backbone files at {folder}: set SHARED_WEIGHTS_DIR")
    return [i.backbone.name for i in install_from(folder, list(CATALOGUE.values()))]


def import_caltech() -> Any:
    from datasets.services import dataset_create, import_local_file

    path = Path(os.environ.get("CALTECH_ZIP", SHARED / "datasets/caltech101_10class/caltech101_10class.zip"))
    if not path.is_file():
        sys.exit(f"{path} is missing: set CALTECH_ZIP")
    dataset = dataset_create(name="caltech101_10class")
    record = import_local_file(dataset=dataset, path=path)
    print(f"imported {record.report.get('imported')} photos ({record.status})")
    return dataset


def import_cifar(per_class: int, work: Path) -> Any:
    """The first `per_class` training images of each class, as a zip of PNG class folders."""
    from PIL import Image

    from benchmarks.train_cifar10 import load_cifar10
    from datasets.services import dataset_create, import_local_file

    tarball = Path(os.environ.get("CIFAR10_TARBALL", SHARED / "datasets/cifar10/cifar-10-python.tar.gz"))
    x, y, _, _, classes = load_cifar10(tarball)
    path = work / "cifar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for c, name in enumerate(classes):
            for i in np.flatnonzero(y == c)[:per_class]:
                buffer = io.BytesIO()
                Image.fromarray(x[i]).save(buffer, format="PNG")
                archive.writestr(f"{name}/{i}.png", buffer.getvalue())
    # 20% test (600 images at 300 per class, against 10% for photos), so the figures are not noise.
    dataset = dataset_create(name=f"cifar10-{per_class}")
    dataset.test_fraction = 0.2
    dataset.save(update_fields=["test_fraction"])
    record = import_local_file(dataset=dataset, path=path)
    print(f"imported {record.report.get('imported')} CIFAR-10 images ({record.status})")
    return dataset


def run_job(dataset: Any, config: dict[str, Any]) -> Any:
    from trainer.jobs.services import training_job_run, training_job_start
    from trainer.ml.config import TrainConfig
    from trainer.models import TrainingJob

    started = time.perf_counter()
    job = training_job_start(dataset=dataset, config=TrainConfig.from_dict(config), enqueue=False)
    training_job_run(job_id=job.pk)
    job = TrainingJob.objects.select_related("model_version").get(pk=job.pk)
    job.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
    if job.status != "succeeded":
        sys.exit(f"job {job.pk} {job.status}: {job.error}")
    return job


def describe(label: str, job: Any) -> str:
    version = job.model_version
    kept = (version.metrics.get("transfer") or {}).get("kept")
    extra = f", kept the {kept}" if kept else ""
    return f"{label:<34} {version.accuracy:.4f} test accuracy in {job.seconds:6.1f} s ({version.arch}{extra})"


def logistic_regression(job: Any) -> tuple[float, float]:
    """The reference: scikit-learn on the job's own cached features, same splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from trainer.jobs.snapshots import snapshot_arrays, snapshot_features
    from trainer.ml import backbones

    data = snapshot_arrays(job.snapshot, job.config["image_size"])
    features = snapshot_features(job.snapshot, data, backbones.get(job.config["arch"]),
                                 image_size=job.config["image_size"])  # fmt: skip
    started = time.perf_counter()
    scaler = StandardScaler().fit(features.train[0])
    model = LogisticRegression(max_iter=5000).fit(scaler.transform(features.train[0]), data.train.y)
    accuracy = float(model.score(scaler.transform(features.test[0]), data.test.y))
    return accuracy, time.perf_counter() - started


def benchmark(dataset: Any, *, compare_resnet: bool) -> None:
    first = run_job(dataset, {})
    print(f"auto chose: {first.recipe}")
    print(describe("auto, first job", first))
    transfer = first.config["arch"] not in ("resnet", "baseline")
    if transfer:  # from scratch, a second job is the same work again: nothing is cached but the decoded images
        second = run_job(dataset, {})
        print(describe("auto, second job (cached)", second))
    if transfer:
        accuracy, seconds = logistic_regression(first)
        ratio = first.model_version.accuracy / accuracy
        print(f"{'reference: logistic regression':<34} {accuracy:.4f} on the same features ({seconds:.1f} s to fit); "
              f"auto / reference = {ratio:.3f}")  # fmt: skip
    if compare_resnet:
        if not transfer:  # the recipe is resnet's defaults at the native size (tests/test_transfer.py holds it)
            print("reference: resnet                  auto chose resnet with its defaults: the run above is both")
            return
        resnet = run_job(dataset, {"arch": "resnet"})
        print(describe("reference: resnet from scratch", resnet))
        print(f"auto / resnet accuracy = {first.model_version.accuracy / resnet.model_version.accuracy:.3f}, "
              f"time = {first.seconds / resnet.seconds:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", choices=["caltech", "cifar"], nargs="?", default="caltech")
    parser.add_argument("--per-class", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="photos-bench-") as tmp:
        work = Path(tmp)
        configure(work)
        installed = install_backbones()
        print(f"installed backbones: {', '.join(installed)}")
        dataset = import_caltech() if args.data == "caltech" else import_cifar(args.per_class, work)
        benchmark(dataset, compare_resnet=args.data == "cifar")


if __name__ == "__main__":
    main()
