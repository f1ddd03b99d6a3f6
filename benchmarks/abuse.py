"""Hostile uploads against a worker's memory and CPU (issue 16): each case beside a normal import.

Every case imports one archive through the platform (`import_local_file`, what the
import task runs) in a fresh process with its own SQLite database and media folder,
and prints the import's CPU seconds and the process's peak memory (VmHWM), each as a
ratio to the normal import of the same run. The archives are built here:

- normal: a zip of generated 800x600 JPEG "photos";
- tar.gz bomb: two images and one member of 2 GiB of zeros (the reported one was a
  20 GiB member in a 20 MB file), against a budget scaled down by the same 10x, then
  against the default budget (the member is then skipped, its bytes streamed past);
- zeros.zip: 512 MB of zeros named .zip;
- big entries: a zip of 40 entries of 64 MiB of zeros each (2.6 MB on disk);
- requests: one prediction request with 16 PNGs of 6,300 x 6,300 (131 KB each) in a fresh
  web process, beside one with a single 32x32 PNG.

Targets: every hostile case is refused or skipped with its reason, within a few
seconds of CPU, and with peak memory bounded by the IMPORT_* settings (about the
normal import's plus IMPORT_BATCH_BYTES and two entries), never by the archive.

    .venv/bin/python benchmarks/abuse.py
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB, GiB = 2**20, 2**30


def peak_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the archives ---------------------------------------------------------------------------


def photo(seed: int) -> bytes:
    """An 800x600 JPEG with a photo's entropy (gradients and noise), about 100 KB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 800, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1, 3)
    pixels = np.clip(ramp + rng.normal(0, 25, (600, 800, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


class Zeros(io.RawIOBase):
    """`size` zero bytes, read in pieces: a 2 GiB member is never held in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def normal_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(60):
            archive.writestr(f"{('cat', 'dog', 'bird')[i % 3]}/{i:03d}.jpg", photo(i))
    return path


def bomb_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in (("cat/a.jpg", photo(1)), ("cat/b.jpg", photo(2))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("cat/zeros.jpg")
        info.size = 2 * GiB
        tar.addfile(info, Zeros(info.size))
    return path


def zeros_zip(path: Path) -> Path:
    with path.open("wb") as file:
        file.truncate(512 * MiB)
    return path


def big_entries_zip(path: Path) -> Path:
    zeros = bytes(64 * MiB)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for i in range(40):
            archive.writestr(f"cat/{i:02d}.png", zeros)
    return path


# (name, file name, builder, settings for the worker): the bomb's budget is scaled with the bomb.
ARCHIVE_CASES: list[tuple[str, str, Callable[[Path], Path], dict[str, str]]] = [
    ("normal: 60 photos (zip)", "photos.zip", normal_zip, {}),
    ("tar.gz: 2 GiB member + 2 images", "bomb.tar.gz", bomb_tar, {"IMPORT_MAX_EXPANDED_BYTES": str(16 * GiB // 10)}),
    ("the same at the default budget", "bomb.tar.gz", bomb_tar, {}),
    ("512 MB of zeros named .zip", "zeros.zip", zeros_zip, {}),
    ("zip: 40 entries of 64 MiB", "big-entries.zip", big_entries_zip, {}),
]


# Prediction requests, each in a fresh web process (no TensorFlow: the model is served by
# ONNX Runtime, as in production) beside a normal request: the 16 PNGs of
# 6,300 x 6,300 (131 KB each) took 10 s of CPU; PREDICT_MAX_REQUEST_PIXELS now refuses
# them from their headers.
def small_png(side: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


REQUEST_CASES: list[tuple[str, int, int]] = [  # (name, images, side in pixels)
    ("normal: one 32x32 PNG", 1, 32),
    ("16 PNGs of 6,300 x 6,300", 16, 6300),
]


def train_model(work: Path) -> None:
    """A tiny live model in `work`'s database, trained in this (throwaway) process."""
    _django(work)
    from django.contrib.auth.models import User

    from datasets.services import dataset_create, images_add
    from trainer.jobs.services import training_job_run, training_job_start
    from trainer.ml.config import TrainConfig

    dataset = dataset_create(name="abuse")
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    items = [(f"{c}-{i}.png", _noisy(rgb, i), c) for c, rgb in colours.items() for i in range(20)]
    images_add(dataset=dataset, items=items)
    config = TrainConfig.from_dict({"arch": "baseline", "epochs": 2, "batch_size": 16, "image_size": 32})
    training_job_run(job_id=training_job_start(dataset=dataset, config=config, enqueue=False).pk)
    User.objects.create_user("bench", password="bench-password-123")


def _noisy(rgb: tuple[int, int, int], seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(seed).integers(-30, 30, (16, 16, 3))
    pixels = np.clip(np.array(rgb) + noise, 0, 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def run_request(work: Path, count: int, side: int) -> dict[str, Any]:
    _django(work, migrate=False)
    from django.contrib.auth.models import User
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(User.objects.get(username="bench"))
    image = (work / f"{side}.png").read_bytes()  # built by the parent: its pixels are not this process's
    client.post("/api/v1/predict/", {"image": SimpleUploadedFile("warm.png", small_png(32))})  # loads the model
    before_mb = peak_mb()
    cpu, wall = time.process_time(), time.perf_counter()
    files = [SimpleUploadedFile(f"{i}.png", image) for i in range(count)]
    response = client.post("/api/v1/predict/", {"images": files})
    return {
        "cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall, "peak_mb": peak_mb(),
        "before_mb": before_mb, "status": response.status_code, "bytes": len(image) * count,
        "detail": response.json().get("detail", "") if response.status_code != 200 else "",
    }  # fmt: skip


def _django(work: Path, *, migrate: bool = True) -> None:
    os.environ.update(
        VAR_DIR=str(work), DJANGO_SETTINGS_MODULE="classifier_site.settings", PREDICT_THROTTLE_RATE="none"
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


# --- one measurement, in a child process -------------------------------------------------


def run_import(source: Path, work: Path) -> dict[str, Any]:
    _django(work)
    from datasets.services import dataset_create, import_local_file

    dataset = dataset_create(name="abuse")
    before_mb = peak_mb()
    cpu, wall = time.process_time(), time.perf_counter()
    record = import_local_file(dataset=dataset, path=source)
    report = record.report or {}
    return {
        "cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall, "peak_mb": peak_mb(),
        "before_mb": before_mb, "status": record.status, "error": record.error,
        "imported": report.get("imported", 0), "skipped": [s["reason"] for s in report.get("skipped", [])],
    }  # fmt: skip


def measure(source: Path, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="abuse-") as work:
        command = [sys.executable, __file__, "--measure", str(source), "--work", work]
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ | env)
        if result.returncode:
            sys.exit(f"{source.name} failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def outcome(figures: dict[str, Any]) -> str:
    if figures["status"] != "succeeded":
        return f"failed: {figures['error']}"
    reasons = sorted(set(figures["skipped"]))
    skipped = f", {len(figures['skipped'])} skipped ({'; '.join(reasons)})" if reasons else ""
    return f"imported {figures['imported']}{skipped}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--request", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child process: one import, printed as JSON
        print(json.dumps(run_import(args.measure, args.work)))
        return
    if args.train:
        train_model(args.work)
        return
    if args.request:  # a child process: one prediction request, printed as JSON
        print(json.dumps(run_request(args.work, *args.request)))
        return
    with tempfile.TemporaryDirectory(prefix="abuse-src-") as tmp:
        reference: dict[str, Any] | None = None
        for name, file_name, build, env in ARCHIVE_CASES:
            path = Path(tmp) / file_name
            if not path.exists():
                build(path)
            figures = measure(path, env)
            reference = reference or figures
            cpu_ratio = figures["cpu"] / max(reference["cpu"], 1e-3)
            peak_ratio = figures["peak_mb"] / reference["peak_mb"]
            print(f"{name:<34} {path.stat().st_size / MiB:7.1f} MB file: CPU {figures['cpu']:6.2f} s "
                  f"(x{cpu_ratio:5.2f} normal), peak memory {figures['peak_mb']:6.0f} MB (x{peak_ratio:4.2f}; "
                  f"{figures['before_mb']:.0f} MB before the import): {outcome(figures)}")  # fmt: skip
    measure_requests()


def measure_requests() -> None:
    with tempfile.TemporaryDirectory(prefix="abuse-web-") as work:
        _child(["--train", "--work", work])
        reference: dict[str, Any] | None = None
        for name, count, side in REQUEST_CASES:
            (Path(work) / f"{side}.png").write_bytes(small_png(side))
            figures = json.loads(_child(["--request", str(count), str(side), "--work", work]).splitlines()[-1])
            reference = reference or figures
            cpu_ratio = figures["cpu"] / max(reference["cpu"], 1e-3)
            answer = f"{figures['status']}" + (f" ({figures['detail']})" if figures["detail"] else "")
            print(f"{name:<34} {figures['bytes'] / MiB:7.2f} MB sent:  CPU {figures['cpu']:6.3f} s "
                  f"(x{cpu_ratio:5.2f} normal), wall {figures['wall']:.3f} s, web process peak "
                  f"{figures['peak_mb']:5.0f} MB ({figures['before_mb']:.0f} MB before): {answer}")  # fmt: skip


def _child(arguments: list[str]) -> str:
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{arguments} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


if __name__ == "__main__":
    main()
