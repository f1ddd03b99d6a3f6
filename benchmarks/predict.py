"""Serving speed: two datasets' models live, requests alternating between them, beside the bare runtime call.

Sets up a throw-away site in a temp folder (its own SQLite database, media, model cache
and file cache), records two 32x32 baseline CNNs in each of two datasets as model
versions the way a finished job does (each dataset's first goes live), starts gunicorn
on a free loopback port and measures with ApacheBench (`ab`, from apache2-utils) and a
Python keep-alive client:

- concurrency 1, requests alternating between the datasets' URLs
  (POST /api/v1/datasets/{id}/predict/, Python client): p50 and p99 of a 32x32 PNG
  (targets <= 1.5 ms and <= 5 ms); ab on one dataset's URL beside it;
- concurrency 8, one ab per dataset at 4 each: requests/s (target >= 1,200 on 2 cores);
- concurrency 8 while both datasets' versions are promoted back and forth through
  POST /api/v1/models/{id}/promote/: errors (target 0), that every answer names a
  version of the dataset asked, and that the answers then name the new versions;
- a 224x224 JPEG on a pretrained backbone at 224 px (transfer learning), concurrency 1
  (target p50 <= 5 ms);
- memory: the RSS of a fresh web process before and after it loads 5 datasets' models,
  and after a tiny PREDICT_MEMORY_MB evicts all but one.

Each latency is printed beside the same model called through the runtime the site
chose for it (ONNX Runtime or the `tf.function`), bare, in a separate process, and
/healthz (Django and gunicorn alone) is measured as the floor. A fresh process also
times a prediction in-process (Django's test client, with and without the throttle),
`predictor.predict()` alone, and the pieces of a request around it. Model building and
reference calls run in child processes: TensorFlow stays out of the measuring client.
Targets are for a 2-core machine; run it on an idle one.

PREDICT_THROTTLE_RATE is 100000/s unless --throttle-rate says otherwise, so the throttle
counts every request (at the cost of a real one) but never refuses the benchmark's client.

    .venv/bin/python benchmarks/predict.py                       # 2 sync workers, 2,000 requests a phase
    .venv/bin/python benchmarks/predict.py --requests 300 --skip-224    # a quick check
    .venv/bin/python benchmarks/predict.py --threads 4           # gthread workers, as the Procfile runs them
    .venv/bin/python benchmarks/predict.py --throttle-cache-url redis://127.0.0.1:6379/9   # one count across workers
"""

import argparse
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = ROOT.parent / "shared/weights/models"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PREDICT = "/api/v1/predict/"
RESULT = "RESULT "  # prefix of a child process's JSON line (TensorFlow writes to the same streams)


# --- Child processes: Django set-up and the bare tf.function reference -------------------------


def child_setup(work: Path, arch_224: str, skip_224: bool) -> dict[str, Any]:
    """Migrate, create an admin with a token, record the model versions: two in each of
    the datasets requests alternate between, one in each of two more (for the memory
    figure), and the 224 px one in a dataset of its own. Each dataset's first is live."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from datasets.services import dataset_create

    call_command("migrate", verbosity=0, interactive=False)
    user = User.objects.create_superuser("bench", "bench@example.com", secrets.token_urlsafe(16))
    token = Token.objects.create(user=user).key
    images = write_images(work)
    small = {"arch": "baseline", "image_size": 32}
    datasets: dict[str, list[dict[str, Any]]] = {}
    for n, name in enumerate(("bench-a", "bench-b", "bench-c", "bench-d")):
        dataset = dataset_create(name=name)
        count = 2 if name in ("bench-a", "bench-b") else 1
        datasets[name] = [record_version(work, dataset, small, seed=10 * n + i) for i in range(count)]
    big, skipped = None, "--skip-224" if skip_224 else None
    if not skip_224:
        big, skipped = record_224(work, dataset_create(name="bench-photos"), arch_224)
    if big:
        datasets["bench-photos"] = [big]
    return {
        "token": token,
        "images": images,
        "datasets": {name: [{k: v for k, v in row.items() if k != "version"} for row in rows]
                     for name, rows in datasets.items()},
        "skipped_224": skipped,
        "tensorflow": __import__("tensorflow").__version__,
    }  # fmt: skip


def write_images(work: Path) -> dict[str, str]:
    """A 32x32 PNG (CIFAR-sized) and a 224x224 JPEG: a real photo when the shared one is there."""
    import numpy as np
    from PIL import Image

    photo = weights_dir().parent / "test_images/cat.jpg"
    if photo.is_file():
        image = Image.open(photo).convert("RGB")
    else:  # smooth colours with some noise: compresses like a photo, not like random pixels
        across, down = np.meshgrid(np.linspace(0, 255, 224), np.linspace(0, 255, 224))
        pixels = np.stack([across, down, 255 - across], axis=-1) + np.random.default_rng(0).normal(0, 12, (224, 224, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image.resize((32, 32), Image.Resampling.BILINEAR).save(work / "image-32.png", format="PNG")
    image.resize((224, 224), Image.Resampling.BILINEAR).save(work / "image-224.jpg", format="JPEG", quality=90)
    return {"32": str(work / "image-32.png"), "224": str(work / "image-224.jpg")}


def record_version(work: Path, dataset: Any, given: dict[str, Any], seed: int) -> dict[str, Any]:
    """Build an (untrained: speed is what counts) model and store it as a finished job's
    version, prepared for serving as the training worker prepares one (on noise images:
    these versions have no test split)."""
    import keras
    import numpy as np

    from trainer.jobs.services import training_job_start
    from trainer.ml.architectures import build_model
    from trainer.ml.config import TrainConfig
    from trainer.ml.runtimes import prepare_serving
    from trainer.ml.train import MODEL_FILE
    from trainer.ml.transfer import untrained_model
    from trainer.registry.services import model_version_create

    keras.utils.set_random_seed(seed)
    config = TrainConfig.from_dict(given)
    folder = work / f"built-{config.arch}-{config.image_size}-{seed}"
    folder.mkdir()
    build = untrained_model if config.is_pretrained else build_model
    build(config, len(CLASSES)).save(folder / MODEL_FILE)
    size = config.image_size
    prepare_serving(folder / MODEL_FILE, np.random.default_rng(seed).integers(0, 256, (8, size, size, 3), np.uint8))
    snapshot = {"classes": CLASSES, "hash": ""}
    job = training_job_start(dataset=dataset, config=config, enqueue=False, snapshot=snapshot)
    version = model_version_create(job=job, model_dir=folder, metrics={}, config=config)
    return {"version": version, "id": version.pk, "arch": config.arch, "size": config.image_size,
            "dataset": dataset.pk, "file": str(folder / MODEL_FILE)}  # fmt: skip


def record_224(work: Path, dataset: Any, arch: str) -> tuple[dict[str, Any] | None, str | None]:
    from trainer.ml.backbones import get
    from trainer.ml.weights import WeightsMissing, install_from, source_name

    install_from(weights_dir(), [get(arch)])  # into $KERAS_HOME, where the platform looks
    try:
        return record_version(work, dataset, {"arch": arch, "image_size": 224}, seed=3), None
    except WeightsMissing:
        return None, f"ImageNet weights {source_name(get(arch))} not found in {weights_dir()} (set SHARED_WEIGHTS_DIR)"


def dataset_url(dataset_id: int) -> str:
    return f"/api/v1/datasets/{dataset_id}/predict/"


def child_costs(token: str, png: bytes, calls: int, dataset_id: int) -> dict[str, Any]:
    """One steady-state prediction in a fresh process, as a gunicorn worker runs it but with
    no HTTP (Django's test client): its SQL queries, cache calls and time, and the predictor's."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from classification.predictor import get_predictor

    client = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")

    def post() -> Any:
        return client.post(dataset_url(dataset_id), {"image": SimpleUploadedFile("x.png", png, "image/png")})

    deadline = time.monotonic() + 60
    while (first := post()).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)  # the first request loads the model (perhaps in the background)
    if first.status_code != 200:
        return {"error": f"{first.status_code}: {first.content[:300]!r}"}
    rounds = 10
    with CaptureQueriesContext(connection) as queries, CacheCalls() as cache:
        for _ in range(rounds):
            post()
    count = len(queries)
    tables = Counter(m.group(1) for q in queries for m in [re.search(r'FROM "(\w+)"', q["sql"])] if m)
    predictor, calls = get_predictor(), min(calls, 1000)
    with_throttle, without = alternate(post, calls)
    return {"queries": count / rounds, "tables": {t: n / rounds for t, n in tables.items()},
            "cache_calls": {k: v / rounds for k, v in cache.counts.items()}, "cache": cache.backend,
            "client": percentiles(with_throttle), "unthrottled": percentiles(without),
            "predictor": percentiles(timed(lambda: predictor.predict(png, dataset=dataset_id), calls)),
            "parts": request_parts(token, min(calls, 500))}  # fmt: skip


def alternate(post: Any, calls: int) -> tuple[list[float], list[float]]:
    """Requests with the view's throttles and without, in alternating blocks (same conditions)."""
    from classification.api import PredictView

    throttles = PredictView.throttle_classes
    with_throttle: list[float] = []
    without: list[float] = []
    if not throttles:
        return timed(post, calls), timed(post, calls)
    try:
        for _ in range(max(calls // 50, 1)):
            with_throttle += timed(post, 25)
            PredictView.throttle_classes = []
            without += timed(post, 25)
            PredictView.throttle_classes = throttles
    finally:
        PredictView.throttle_classes = throttles
    return with_throttle, without


def request_parts(token: str, calls: int) -> dict[str, dict[str, float]]:
    """Pieces of a request outside the predictor, each timed alone."""
    from django.conf import settings
    from django.core.cache import caches
    from django.db import connection
    from rest_framework.authentication import TokenAuthentication

    from classifier_site.authentication import CachedTokenAuthentication

    parts = {
        "token look-up, database (1 query)": timed(
            lambda: TokenAuthentication().authenticate_credentials(token), calls
        ),
        "token look-up, remembered (the site's)": timed(
            lambda: CachedTokenAuthentication().authenticate_credentials(token), calls
        ),
    }
    for alias in ("throttle", "default"):  # where the throttle counts, and the shared cache for comparison
        counters = caches[alias]
        step = lambda c=counters: c.add("predict-bench", 1, 60) or c.incr("predict-bench")  # noqa: E731
        parts[f"throttle count in the {alias!r} cache ({type(counters).__name__})"] = timed(step, calls)
    age = settings.DATABASES["default"].get("CONN_MAX_AGE", 0)
    reopen = lambda: (connection.close(), connection.ensure_connection())  # noqa: E731
    parts[f"opening the DB connection (paid once per process: CONN_MAX_AGE={age})"] = timed(reopen, calls)
    return {name: percentiles(times) for name, times in parts.items()}


class CacheCalls:
    """Counts the calls to the throttle's cache backend (one add or incr per request expected)."""

    METHODS = ("get", "set", "add", "delete", "get_many", "set_many", "incr", "touch", "has_key")

    def __enter__(self) -> "CacheCalls":
        from django.core.cache import caches

        self.cls = type(caches["throttle"])
        self.backend = self.cls.__name__
        self.counts: Counter[str] = Counter()
        self.depth = 0
        self.saved = {name: self.cls.__dict__[name] for name in self.METHODS if name in self.cls.__dict__}
        for name in self.METHODS:
            setattr(self.cls, name, self._counting(name, getattr(self.cls, name)))
        return self

    def _counting(self, name: str, method: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.depth == 0:  # get_many calls get: count what the caller asked for
                self.counts[name] += 1
            self.depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1

        return counted

    def __exit__(self, *exc: object) -> None:
        for name in self.METHODS:
            if name in self.saved:
                setattr(self.cls, name, self.saved[name])
            else:
                delattr(self.cls, name)


def child_reference(model: Path, image: Path, threads: int, calls: int, work: Path) -> dict[str, Any]:
    """The same model file as the server's, loaded as the predictor loads it (the fastest
    runtime with Keras' answers), called one image at a time; the tf.function beside it."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from datasets.imaging import load_array
    from trainer.ml.runtimes import configure_tensorflow_threads, fastest_runtime, tensorflow_runtime

    configure_tensorflow_threads(threads)
    data = image.read_bytes()
    size = int(image_width(image))
    batch = load_array(data, size)[np.newaxis]
    samples = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    onnx = work / f"reference-{model.parent.name}-{threads}.onnx"
    choice = fastest_runtime(model, samples, onnx_path=onnx, threads=threads)
    keras = tensorflow_runtime(model, image_shape=batch.shape[1:])
    for _ in range(30):
        choice.runtime.predict(batch)
        keras.predict(batch)
    return {"runtime": choice.runtime.name, "tried": choice.tried,
            "model": percentiles(timed(lambda: choice.runtime.predict(batch), calls)),
            "tf": percentiles(timed(lambda: keras.predict(batch), calls)),
            "decode": percentiles(timed(lambda: load_array(data, size), min(calls, 500)))}  # fmt: skip


def image_width(image: Path) -> int:
    from PIL import Image

    with Image.open(image) as opened:
        return int(opened.size[0])


def child_memory(datasets: dict[str, list[dict[str, Any]]], images: dict[str, str]) -> dict[str, Any]:
    """A fresh web process: RSS before any model, with each dataset's live model loaded,
    and after a tiny PREDICT_MEMORY_MB evicts all but the last."""
    sys.path.insert(0, str(ROOT))
    import ctypes
    import gc

    import django

    django.setup()
    from django.conf import settings

    import classifier_site.urls  # noqa: F401  (every view module: what a web process holds once it serves)
    from classification.predictor import get_predictor

    predictor = get_predictor()
    rss = {"before any model": rss_mb()}
    for rows in datasets.values():
        image = Path(images["224" if rows[0]["size"] == 224 else "32"]).read_bytes()
        predictor.predict(image, dataset=rows[0]["dataset"])
    loaded = predictor.loaded()
    rss[f"{len(loaded)} models loaded"] = rss_mb()
    settings.PREDICT_MEMORY_MB = 0.001
    evicted = predictor.fit_budget()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, as a long-lived process would over time
    rss[f"after evicting {len(evicted)}"] = rss_mb()
    return {"rss_mb": rss, "runtimes": {m.version.pk: [m.runtime.name, m.runtime.nbytes] for m in loaded}}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(call: Any, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731  nearest rank, as ab's
    return {"p50": at(0.50), "p99": at(0.99), "mean": sum(ordered) / len(ordered)}


def weights_dir() -> Path:
    return Path(os.environ.get("SHARED_WEIGHTS_DIR", DEFAULT_WEIGHTS))


def run_child(kind: str, env: dict[str, str], *extra: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, *extra]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    if result.returncode or not lines:
        sys.exit(f"{kind} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT) :])


# --- HTTP: the server, the clients -------------------------------------------------------------


@dataclass
class Load:
    """One load run: what ab (or the Python client) measured."""

    requests: int
    seconds: float
    p50: float
    p99: float
    errors: int  # non-2xx answers, refused, reset or timed-out requests

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


class Site:
    """gunicorn serving the temp site, and the requests a client sends it."""

    def __init__(self, work: Path, env: dict[str, str], args: argparse.Namespace, token: str) -> None:
        self.work, self.env, self.args, self.token = work, env, args, token
        self.port = free_port()
        self.log = work / "gunicorn.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def slots(self) -> int:
        return self.args.workers * self.args.threads

    def start(self) -> None:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        # No control socket: its default path in ~ is shared with any other gunicorn on the machine.
        command = [str(gunicorn), "classifier_site.wsgi", "--bind", f"127.0.0.1:{self.port}",
                   "--workers", str(self.args.workers), "--threads", str(self.args.threads),
                   "--worker-class", self.args.worker_class or ("gthread" if self.args.threads > 1 else "sync"),
                   "--no-control-socket",
                   "--timeout", "120", "--graceful-timeout", "5", "--log-level", "info"]  # fmt: skip
        with self.log.open("wb") as log:  # the first prediction in a worker imports TensorFlow: a long timeout
            self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if request(self.port, "GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        sys.exit(f"gunicorn did not answer /healthz within 60 s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)  # the arbiter and its workers: their own process group
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def predict(self, payload: "Payload", path: str = PREDICT) -> tuple[int, Any]:
        status, body = request(self.port, "POST", path, payload.body, {**self.auth(), **payload.headers})
        return status, json.loads(body) if status == 200 else body[:300]

    def promote(self, version_id: int) -> int:
        headers = {**self.auth(), "Content-Type": "application/json"}  # force: past the promotion gate
        return request(self.port, "POST", f"/api/v1/models/{version_id}/promote/", b'{"force": true}', headers)[0]

    def load(self, path: str, payload: "Payload | None", count: int, concurrency: int) -> Load:
        headers = self.auth() if payload else {}
        if shutil.which("ab") and not self.args.python_client:
            return ab_load(self.port, path, payload, headers, count, concurrency, self.work)
        return python_load(self.port, [path], payload, headers, count, concurrency)

    def alternating(self, paths: list[str], payload: "Payload", count: int) -> Load:
        """Concurrency 1, each request to the next of `paths` (the Python client: ab sends one URL)."""
        return python_load(self.port, paths, payload, self.auth(), count, 1)

    def split_load(self, paths: list[str], payload: "Payload", count: int, concurrency: int) -> Load:
        """One client per path at once, `concurrency` shared between them; the rate is the sum."""
        loads: list[Load] = []
        share = max(concurrency // len(paths), 1)
        threads = [threading.Thread(target=lambda p=p: loads.append(self.load(p, payload, count // len(paths), share)))
                   for p in paths]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = max(load.seconds for load in loads)
        return Load(sum(load.requests for load in loads), seconds, max(load.p50 for load in loads),
                    max(load.p99 for load in loads), sum(load.errors for load in loads))  # fmt: skip

    def served_version(self, payload: "Payload", path: str = PREDICT) -> int | None:
        status, answer = self.predict(payload, path)
        return answer["model_version"]["id"] if status == 200 else None

    def warm_up(self, payload: "Payload", paths: list[str], seconds: float = 180) -> None:
        """Until every worker has loaded each dataset's model: rounds of concurrent
        requests, three in a row all answered fast."""
        deadline, fast_rounds = time.monotonic() + seconds, 0
        while fast_rounds < 3:
            if time.monotonic() > deadline:
                sys.exit(f"warm-up did not settle in {seconds:.0f} s:\n{self.log_tail()}")
            run = python_load(self.port, paths, payload, self.auth(), 6 * self.slots * len(paths), 2 * self.slots)
            fast_rounds = fast_rounds + 1 if run.errors == 0 and run.p99 < 250 else 0
        self.split_load(paths, payload, 200, 8)


@dataclass
class Payload:
    body: bytes
    headers: dict[str, str]

    @classmethod
    def image(cls, path: Path) -> "Payload":
        boundary = f"predict-bench-{secrets.token_hex(8)}"
        kind = "image/png" if path.suffix == ".png" else "image/jpeg"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                f"Content-Type: {kind}\r\n\r\n")  # fmt: skip
        body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return cls(body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ab_load(port, path, payload, headers, count, concurrency, work) -> Load:  # type: ignore[no-untyped-def]
    """ApacheBench: keep-alive, variable lengths accepted (-l), socket errors counted, not fatal (-r)."""
    csv = work / "ab-percentiles.csv"
    command = ["ab", "-q", "-k", "-l", "-r", "-s", "60", "-n", str(count), "-c", str(concurrency), "-e", str(csv)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if payload:
        (work / "ab-body").write_bytes(payload.body)
        command += ["-p", str(work / "ab-body"), "-T", payload.headers["Content-Type"]]
    result = subprocess.run([*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=False)
    out = result.stdout

    def number(label: str) -> float:
        found = re.search(rf"^{label}:\s+([\d.]+)", out, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    if result.returncode or not number("Complete requests"):
        sys.exit(f"ab failed (exit {result.returncode}):\n{out[-2000:]}\n{result.stderr[-2000:]}")
    table = dict(line.split(",") for line in csv.read_text().splitlines()[1:])
    errors = int(number("Failed requests") + number("Non-2xx responses"))
    return Load(int(number("Complete requests")), number("Time taken for tests"), float(table["50"]),
                float(table["99"]), errors)  # fmt: skip


def python_load(port, paths, payload, headers, count, concurrency) -> Load:  # type: ignore[no-untyped-def]
    """Threads, each with a keep-alive connection (reopened when the server closes it),
    the requests going to each of `paths` in turn."""
    times: list[float] = []
    errors = [0]
    left = iter(range(count))
    lock = threading.Lock()
    body, all_headers = (payload.body, {**headers, **payload.headers}) if payload else (None, headers)
    method = "POST" if payload else "GET"

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if (n := next(left, None)) is None:
                    break
            path = paths[n % len(paths)]
            start = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=all_headers)
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 300
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
            with lock:
                times.append((time.perf_counter() - start) * 1000)
                errors[0] += not ok
        connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures = percentiles(times)
    return Load(len(times), time.perf_counter() - start, figures["p50"], figures["p99"], errors[0])


# --- The phases --------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Checks answers while ab loads the server: status, JSON shape, which version of the
    dataset asked answered when."""

    def __init__(self, site: Site, payload: Payload, known: dict[str, set[int]]) -> None:
        super().__init__(daemon=True)
        self.site, self.payload, self.known = site, payload, known
        self.stop = threading.Event()
        self.answers: dict[str, list[tuple[float, int]]] = {path: [] for path in known}  # (monotonic time, version)
        self.bad: list[str] = []

    def run(self) -> None:
        paths = list(self.known)
        n = 0
        while not self.stop.wait(0.02):
            path, n = paths[n % len(paths)], n + 1
            try:
                status, answer = self.site.predict(self.payload, path)
            except (OSError, http.client.HTTPException) as exc:
                self.bad.append(f"{type(exc).__name__}: {exc}")
                continue
            if status != 200 or not valid_answer(answer, self.known[path]):
                self.bad.append(f"{path} {status}: {str(answer)[:200]}")
            else:
                self.answers[path].append((time.monotonic(), answer["model_version"]["id"]))

    def switched(self, path: str, new: int, since: float, confirmed: float) -> float:
        """Seconds from `since` until the sampled answers for `path` named only `new` (`confirmed` if none did)."""
        after = [(at, version) for at, version in self.answers[path] if at >= since]
        stale = [i for i, (_, version) in enumerate(after) if version != new]
        first = stale[-1] + 1 if stale else 0
        return (after[first][0] if first < len(after) else confirmed) - since


def valid_answer(answer: Any, known: set[int]) -> bool:
    """A whole answer, by one of `known` (the versions of the dataset asked)."""
    try:
        scores = answer["predictions"]
        labels_ok = all(s["label"] in CLASSES and 0 <= s["probability"] <= 1 for s in scores)
        return answer["model_version"]["id"] in known and len(scores) == 5 and labels_ok
    except (KeyError, TypeError):
        return False


def promotions_under_load(site: Site, payload: Payload, pairs: dict[str, tuple[int, int]], args,  # type: ignore[no-untyped-def]
                          expected_rate: float) -> dict:  # type: ignore[type-arg]  # fmt: skip
    """A concurrency-8 run (both datasets) during which each dataset's live version flips
    old -> new -> old ... -> new, the two datasets' promotions interleaved."""
    flips = args.promotions | 1  # odd: ends on the new one
    order = [(path, new if i % 2 == 0 else old) for i in range(flips) for path, (old, new) in pairs.items()]
    interval = args.requests / expected_rate / (len(order) + 1)
    result: dict[str, Any] = {}
    sampler = Sampler(site, payload, {path: set(ids) for path, ids in pairs.items()})
    paths = list(pairs)
    loader = threading.Thread(target=lambda: result.update(load=site.split_load(paths, payload, args.requests, 8)))
    loader.start()
    sampler.start()
    statuses = []
    for _, version in order:
        time.sleep(interval)
        statuses.append(site.promote(version))
    last_promotion = time.monotonic()
    loader.join()
    sampler.stop.set()
    sampler.join()
    switched = {}
    for path, (_, new) in pairs.items():
        confirmed = wait_for_version(site, payload, path, new, consecutive=4 * site.slots, seconds=30)
        switched[path] = sampler.switched(path, new, last_promotion, confirmed) if confirmed else None
    sampled = {path: dict(Counter(version for _, version in answers)) for path, answers in sampler.answers.items()}
    return {"load": result["load"], "promote_statuses": statuses, "bad": sampler.bad, "switched_after": switched,
            "sampled": sampled, "promotions": len(order)}  # fmt: skip


def wait_for_version(site: Site, payload: Payload, path: str, version: int, consecutive: int,
                     seconds: float) -> float | None:  # fmt: skip
    """When `consecutive` answers in a row named `version` (every worker has switched), or None."""
    deadline, run = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        run = run + 1 if site.served_version(payload, path) == version else 0
        if run >= consecutive:
            return time.monotonic()
        time.sleep(0.01 if run else 0.1)
    return None


def reference(env: dict[str, str], version: dict[str, Any], image: str, threads: int, calls: int) -> dict:  # type: ignore[type-arg]
    return run_child("reference", env, "--model", version["file"], "--image", image, "--tf-threads", str(threads),
                     "--calls", str(calls), "--work", str(Path(version["file"]).parent.parent))  # fmt: skip


def best_reference(refs: dict[int, dict[str, Any]]) -> tuple[int, dict[str, float]]:
    threads = min(refs, key=lambda t: refs[t]["model"]["p50"])
    return threads, refs[threads]["model"]


# --- Report ------------------------------------------------------------------------------------


def server_env(work: Path, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="classifier_site.settings",
        VAR_DIR=str(work / "var"),
        DATABASE_URL=f"sqlite:///{work / 'db.sqlite3'}",
        MEDIA_ROOT=str(work / "media"),
        MODEL_CACHE_DIR=str(work / "model-cache"),
        STATIC_ROOT=str(work / "static"),
        TRAIN_WORK_DIR=str(work / "training"),
        CACHE_URL=args.cache_url or f"filecache://{work / 'cache'}",
        **({"THROTTLE_CACHE_URL": args.throttle_cache_url} if getattr(args, "throttle_cache_url", "") else {}),
        CELERY_BROKER_URL=f"sqla+sqlite:///{work / 'broker.sqlite3'}",
        KERAS_HOME=str(work / "keras"),
        # Production-like: no debug bookkeeping; plain HTTP on loopback, so no HTTPS redirect.
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        PREDICT_THROTTLE_RATE=args.throttle_rate,
        PROMOTION_GATE="false",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    if args.tf_threads:
        env["PREDICT_TF_THREADS"] = str(args.tf_threads)
    return env


def honoured(name: str) -> str:
    """Whether the site's code reads a setting yet (the serving code is changing)."""
    sources = [*ROOT.glob("classification/*.py"), ROOT / "classifier_site/settings.py"]
    return "read by the site" if any(name in path.read_text() for path in sources) else "NOT read by the site yet"


def machine_line(args: argparse.Namespace, setup: dict[str, Any]) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    kind = args.worker_class or ("gthread" if args.threads > 1 else "sync")
    mode = f"{kind} {args.workers}x{args.threads}"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores ({model}), load average {load}; Python {platform.python_version()}, "
            f"TensorFlow {setup['tensorflow']}; gunicorn {mode} workers")  # fmt: skip


def row(name: str, value: str, target: str = "", verdict: str = "", ref: str = "", ratio: str = "") -> None:
    print(f"{name:<36} {value:>13}  {target:<9} {verdict:<8} {ref:<40} {ratio}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report_costs(costs: dict[str, Any], env: dict[str, str]) -> None:
    tables = ", ".join(f"{t} x{n:g}" for t, n in sorted(costs["tables"].items())) or "none"
    cache = ", ".join(f"{k} x{v:g}" for k, v in sorted(costs["cache_calls"].items())) or "none"
    print(f"per prediction (in-process, steady state): {costs['queries']:g} SQL queries ({tables}); "
          f"{costs['cache']} calls: {cache}")  # fmt: skip
    for name, figures in costs["parts"].items():
        print(f"  {name:<48} p50 {figures['p50']:.3f} ms  p99 {figures['p99']:.3f} ms")
    threads = env.get("PREDICT_TF_THREADS", "unset")
    print(f"PREDICT_THROTTLE_RATE={env['PREDICT_THROTTLE_RATE']} ({honoured('PREDICT_THROTTLE_RATE')}), "
          f"PREDICT_TF_THREADS={threads} ({honoured('PREDICT_TF_THREADS')})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per measured phase (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker; > 1 uses gthread (default 1)")
    parser.add_argument(
        "--worker-class", default="", help="gunicorn worker class (default: sync, gthread with --threads)"
    )
    parser.add_argument("--tf-threads", type=int, default=1, help="PREDICT_TF_THREADS for the site (0: unset)")
    parser.add_argument("--promotions", type=int, default=5, help="promotions during the loaded run (odd)")
    parser.add_argument("--requests-224", type=int, default=500, help="requests of the 224 px phase")
    parser.add_argument("--arch-224", default="mobilenet", help="pretrained backbone for the 224 px model")
    parser.add_argument("--skip-224", action="store_true", help="no 224 px transfer-learning model")
    parser.add_argument("--throttle-rate", default="100000/s", help="PREDICT_THROTTLE_RATE (default: a 1 s window)")
    parser.add_argument("--cache-url", default="", help="CACHE_URL of the site (default: a file cache)")
    parser.add_argument("--throttle-cache-url", default="", help="THROTTLE_CACHE_URL (default: the site's, in-process)")
    parser.add_argument("--server-log", type=Path, help="keep gunicorn's log (with the site's) at this path")
    parser.add_argument("--python-client", action="store_true", help="the Python client even when ab is there")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "setup":
        print(RESULT + json.dumps(child_setup(args.work, args.arch_224, args.skip_224), default=str))
    elif args.child == "costs":
        print(RESULT + json.dumps(child_costs(args.token, args.image.read_bytes(), args.calls, args.dataset)))
    elif args.child == "reference":
        print(RESULT + json.dumps(child_reference(args.model, args.image, args.tf_threads, args.calls, args.work)))
    elif args.child == "memory":
        setup = json.loads(args.setup.read_text())
        print(RESULT + json.dumps(child_memory(setup["datasets"], setup["images"])))
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so that `finally` stops gunicorn
        with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
            bench(Path(tmp), args)


def bench(work: Path, args: argparse.Namespace) -> None:
    env = server_env(work, args)
    started = time.perf_counter()
    setup = run_child("setup", env, "--work", str(work), "--arch-224", args.arch_224,
                      *(["--skip-224"] if args.skip_224 else []))  # fmt: skip
    (work / "setup.json").write_text(json.dumps(setup))
    print(machine_line(args, setup))
    client = f"ab ({shutil.which('ab')})" if shutil.which("ab") and not args.python_client else "Python threads"
    print(f"client: {client}; {args.requests} requests a phase; set-up {time.perf_counter() - started:.0f} s")
    calls = max(args.requests, 500)
    png = setup["images"]["32"]
    first = setup["datasets"]["bench-a"][0]
    costs = run_child("costs", env, "--token", setup["token"], "--image", png, "--calls", str(calls),
                      "--dataset", str(first["dataset"]))  # fmt: skip
    if "error" in costs:
        sys.exit(f"in-process prediction failed: {costs['error']}")
    report_costs(costs, env)
    memory = run_child("memory", env, "--setup", str(work / "setup.json"))
    # The bare call with the site's thread setting and with the runtimes' default, whichever is faster.
    thread_options = sorted({args.tf_threads, 0})
    refs = {t: reference(env, first, png, t, calls) for t in thread_options}
    refs_224 = {}
    big = setup["datasets"].get("bench-photos")
    if big:
        refs_224 = {t: reference(env, big[0], setup["images"]["224"], t, args.requests_224) for t in thread_options}
    site = Site(work, env, args, setup["token"])
    try:
        site.start()
        figures = measure(site, args, setup)
    finally:
        site.stop()
        if args.server_log:
            shutil.copyfile(site.log, args.server_log)
    print()
    summary(args, setup, {**figures, "costs": costs, "refs": refs, "refs_224": refs_224, "memory": memory})


def measure(site: Site, args: argparse.Namespace, setup: dict[str, Any]) -> dict[str, Any]:
    datasets = setup["datasets"]
    pairs = {dataset_url(rows[0]["dataset"]): (rows[0]["id"], rows[1]["id"])
             for name, rows in datasets.items() if name in ("bench-a", "bench-b")}  # fmt: skip
    paths = list(pairs)
    small = Payload.image(Path(setup["images"]["32"]))
    for path, (live, _) in pairs.items():
        status, answer = site.predict(small, path)
        if status != 200 or not valid_answer(answer, {live}):
            sys.exit(f"a sample prediction of {path} answered {status}: {answer}\n{site.log_tail()}")
    print(f"sample answer: {json.dumps(answer)[:150]}...")
    site.warm_up(small, paths)
    figures = {"floor": site.load("/healthz", None, args.requests, 1)}
    figures["one"] = site.alternating(paths, small, args.requests)
    figures["one_ab"] = site.load(paths[0], small, args.requests, 1)
    figures["eight"] = site.split_load(paths, small, args.requests, 8)
    figures["swap"] = promotions_under_load(site, small, pairs, args, figures["eight"].rate)
    big = datasets.get("bench-photos")
    figures["big"] = phase_224(site, args, big[0], Path(setup["images"]["224"])) if big else None
    return figures


def phase_224(site: Site, args: argparse.Namespace, version: dict[str, Any], image: Path) -> Load:
    payload = Payload.image(image)
    path = dataset_url(version["dataset"])
    site.warm_up(payload, [path])
    return site.load(path, payload, args.requests_224, 1)


def thread_label(threads: int) -> str:
    return f"{threads} thr" if threads else "TF default thr"


def summary(args: argparse.Namespace, setup: dict[str, Any], f: dict[str, Any]) -> None:
    threads, bare = best_reference(f["refs"])
    for t, ref in sorted(f["refs"].items()):
        model, keras, decode = ref["model"], ref["tf"], ref["decode"]
        print(f"bare {ref['runtime']}, 32 px, {thread_label(t)}: p50 {model['p50']:.3f} ms, "
              f"p99 {model['p99']:.3f} ms (tf.function p50 {keras['p50']:.3f} ms); "
              f"Pillow decode of the PNG p50 {decode['p50']:.3f} ms")  # fmt: skip
    runtime = f["refs"][threads]["runtime"]
    ref50, ref99 = f"{runtime}, {thread_label(threads)}, {bare['p50']:.3f} ms", f"{runtime} {bare['p99']:.3f} ms"
    one, one_ab, eight, swap = f["one"], f["one_ab"], f["eight"], f["swap"]
    row("figure", "measured", "target", "verdict", "reference, same run", "ratio")
    row("/healthz c=1 p50 (HTTP floor)", f"{f['floor'].p50:.2f} ms", ref=f"p99 {f['floor'].p99:.2f} ms")
    in_process = (("in-process POST p50 (no HTTP)", "client"), ("  the same without the throttle", "unthrottled"),
                  ("predictor.predict() p50", "predictor"))  # fmt: skip
    for name, key in in_process:
        ms = f["costs"][key]["p50"]
        row(name, f"{ms:.2f} ms", ref=ref50, ratio=f"{ms / bare['p50']:.1f}x")
    row("32 px c=1 p50, alternating", f"{one.p50:.2f} ms", "<= 1.5 ms", verdict(one.p50 <= 1.5), ref50,
        f"{one.p50 / bare['p50']:.1f}x")  # fmt: skip
    row("32 px c=1 p99, alternating", f"{one.p99:.2f} ms", "<= 5 ms", verdict(one.p99 <= 5), ref99,
        f"{one.p99 / bare['p99']:.1f}x")  # fmt: skip
    errors_one = one.errors + one_ab.errors
    row("  one dataset, ab: p50 / p99", f"{one_ab.p50:.2f}/{one_ab.p99:.2f} ms", ref=f"errors {errors_one}")
    ceiling = (os.cpu_count() or 1) * 1000 / bare["mean"]
    row("32 px c=8 throughput, both", f"{eight.rate:.0f} req/s", ">= 1200/s", verdict(eight.rate >= 1200),
        f"bare calls on {os.cpu_count()} cores {ceiling:.0f}/s", f"{eight.rate / ceiling:.2f}x")  # fmt: skip
    row("32 px c=8 p50 / p99", f"{eight.p50:.1f}/{eight.p99:.1f} ms", ref=f"errors {eight.errors}")
    errors = swap["load"].errors + len(swap["bad"]) + sum(s != 200 for s in swap["promote_statuses"])
    row(f"errors, {swap['promotions']} promotions at c=8", f"{errors}", "0", verdict(errors == 0),
        f"{swap['load'].rate:.0f} req/s meanwhile")  # fmt: skip
    for path, after in swap["switched_after"].items():
        switched = f"{after:.1f} s" if after is not None else "NEVER (30 s)"
        row(f"  {path} names the new one", switched, ref="after the last promotion (sampled)")
    summary_224(args, setup, f["big"], f["refs_224"])
    memory = f["memory"]
    print("memory of a web process (RSS): " + "; ".join(f"{k} {v:.0f} MB" for k, v in memory["rss_mb"].items())
          + f"; runtimes {memory['runtimes']}")  # fmt: skip
    print(f"answers sampled during the promotions, by dataset and version: {swap['sampled']}; promote calls answered "
          f"{dict(Counter(swap['promote_statuses']))}")  # fmt: skip
    for line in swap["bad"][:5]:
        print(f"  bad answer: {line}")
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}: figures are noisy on a busy machine")


def summary_224(args: argparse.Namespace, setup: dict[str, Any], big: Load | None, refs: dict[int, Any]) -> None:
    if big is None:
        print(f"224 px: skipped ({setup['skipped_224']})")
        return
    threads, bare = best_reference(refs)
    runtime = refs[threads]["runtime"]
    label = f"{runtime}, {thread_label(threads)}"
    row(f"224 px {args.arch_224} c=1 p50", f"{big.p50:.2f} ms", "<= 5 ms", verdict(big.p50 <= 5),
        f"{label} {bare['p50']:.3f} ms", f"{big.p50 / bare['p50']:.1f}x")  # fmt: skip
    row(f"224 px {args.arch_224} c=1 p99", f"{big.p99:.2f} ms", ref=f"{runtime} {bare['p99']:.3f} ms",
        ratio=f"{big.p99 / bare['p99']:.1f}x")  # fmt: skip
    others = ", ".join(f"{thread_label(t)} {r['runtime']} p50 {r['model']['p50']:.2f} ms (tf.function "
                       f"{r['tf']['p50']:.2f} ms)" for t, r in sorted(refs.items()))  # fmt: skip
    print(f"224 px: bare {others}; Pillow decode of the JPEG p50 {refs[threads]['decode']['p50']:.2f} ms"
          f"{'; errors ' + str(big.errors) if big.errors else ''}")  # fmt: skip


if __name__ == "__main__":
    main()
