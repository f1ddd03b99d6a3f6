"""Scale-out on loopback (issue 17): training jobs per minute with one and with two
workers, the object-store traffic per job, and a sweep's time to its best trial with and
without early stopping.

The set-up is the tested multi-host one (tests/test_scale_out.py): a real S3-compatible
server (s3rver, installed by `make install-dev`), PostgreSQL and Redis on loopback, and
worker processes that each have their own folders. Every worker reaches the object
store through a counting TCP proxy, so the traffic is what crossed the socket. Each
worker trains with one TensorFlow thread (TF_NUM_INTRAOP_THREADS=1) and, by default, is
held to a CPU of its own (worker n on CPU n, pool processes included), so a job fits one
core, as the target assumes. Unpinned (`--no-pin`), a lone worker's job also uses the idle
second core (tf.data's threads, the fresh process importing TensorFlow): on 2 cores it
then ran 1.5x faster than pinned, and two workers could not double that.

- throughput: the same N jobs (the `baseline` CNN, 32 px, colour images) on one worker,
  then on two fresh ones; printed as jobs/min, the 2-worker figure as a ratio to the
  1-worker figure of the same run (target >= 1.7x);
- traffic: bytes sent to and read from the object store per job (images read to decode
  the snapshot, checkpoints, the model file and its ONNX conversion);
- sweep: one grid of trials (learning rates from useful to hopeless) on two workers, with
  asynchronous successive halving and without; the time from the sweep's start to its best
  trial's end, and to the sweep's end, the second as a ratio to the first.

    .venv/bin/python benchmarks/scale.py            # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/scale.py --jobs 4   # a quick look
    .venv/bin/python benchmarks/scale.py --sqlite   # the embedded database instead of PostgreSQL
    .venv/bin/python benchmarks/scale.py --no-pin   # workers on any CPU
"""

import argparse
import functools
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BROKER = os.environ.get("SCALE_BROKER_URL", "redis://127.0.0.1:6379/9")
# The multi-host shape's database; --sqlite for the embedded one (whose one writer at a time makes
# two workers wait on each other's progress writes: a measure of SQLite, not of the workers).
POSTGRES = os.environ.get("SCALE_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DATABASE_NAME = "scale_benchmark"
JOB = {"arch": "baseline", "image_size": 32, "epochs": 20, "batch_size": 16, "early_stopping_patience": 0}
SWEEP_RATES = [0.003, 0.001, 0.0003, 1e-5, 3e-6, 1e-6]  # adam: the last three barely move


class CountingProxy:
    """127.0.0.1:<port> forwarded to `target`, counting the bytes each way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.sent, self.received = target, 0, 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> tuple[int, int]:
        with self._lock:
            counts, self.sent, self.received = (self.sent, self.received), 0, 0
        return counts

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [])
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
                    with self._lock:
                        if sock is client:
                            self.sent += len(data)
                        else:
                            self.received += len(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


def database(work: Path, sqlite: bool) -> str:
    """A new, empty database: PostgreSQL's `scale_benchmark` (dropped first), or a SQLite file."""
    if sqlite:
        return f"sqlite:///{work}/db.sqlite3"
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE_NAME} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {DATABASE_NAME}")
    return POSTGRES.rsplit("/", 1)[0] + f"/{DATABASE_NAME}"


def setup(work: Path, sqlite: bool) -> tuple[Any, dict[str, str], CountingProxy]:
    """The site's database (migrated) and bucket; the environment every worker shares."""
    from tests.s3server import S3Server

    s3 = S3Server(work / "s3")
    proxy = CountingProxy(("127.0.0.1", s3.port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(s3.env, AWS_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", DATABASE_URL=database(work, sqlite),
               CELERY_BROKER_URL=BROKER, CACHE_URL=BROKER, VAR_DIR=str(work / "bench"), TF_CPP_MIN_LOG_LEVEL="2",
               TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1",
               TRAIN_CHECKPOINT_UPLOAD_SECONDS="60", PYTHONUNBUFFERED="1")  # fmt: skip
    os.environ.update(env)
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(BROKER).flushdb()
    return s3, env, proxy


def colour_dataset() -> Any:
    from datasets.services import dataset_create, images_add
    from tests.images import colour_items

    dataset = dataset_create(name="colours")
    images_add(dataset=dataset, items=colour_items(60))
    return dataset


def start_workers(env: dict[str, str], work: Path, names: list[str], pin: bool) -> list[subprocess.Popen[bytes]]:
    """One worker process a name; with `pin`, the n-th held to CPU n (its pool processes inherit it)."""
    procs = []
    for n, name in enumerate(names):
        host = work / name
        host.mkdir(parents=True)
        folders = (("MEDIA_ROOT", "media"), ("MODEL_CACHE_DIR", "models"), ("TRAIN_WORK_DIR", "training"),
                   ("KERAS_HOME", "keras"))  # fmt: skip
        own = {**env, **{k: str(host / d) for k, d in folders}}
        log = (work / f"{name}.log").open("wb")
        command = [sys.executable, "-m", "celery", "-A", "classifier_site", "worker", "-Q", "gpu", "-c", "1",
                   "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"]  # fmt: skip
        cpu = {n % (os.cpu_count() or 1)}
        held = functools.partial(os.sched_setaffinity, 0, cpu) if pin else None
        procs.append(subprocess.Popen(command, cwd=ROOT, env=own, stdout=log, stderr=subprocess.STDOUT,
                                      preexec_fn=held))  # fmt: skip
    for name, proc in zip(names, procs, strict=True):
        while "ready." not in (work / f"{name}.log").read_text(errors="replace"):
            if proc.poll() is not None:
                raise SystemExit(f"worker {name} did not start:\n{(work / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.3)
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def wait_finished(jobs: list[Any], timeout: float = 1800) -> None:
    from trainer.models import TrainingJob

    ids, deadline = [j.pk for j in jobs], time.monotonic() + timeout
    while TrainingJob.objects.filter(pk__in=ids, status__in=["queued", "running"]).exists():
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish in time")
        time.sleep(0.5)
    failed = list(TrainingJob.objects.filter(pk__in=ids, status="failed").values_list("pk", "error"))
    if failed:
        raise SystemExit(f"jobs failed: {failed}")


def throughput(
    dataset: Any, env: dict[str, str], work: Path, proxy: CountingProxy, workers: int, jobs: int, pin: bool
) -> dict[str, float]:
    from trainer.jobs.services import training_job_start
    from trainer.ml.config import TrainConfig

    procs = start_workers(env, work / f"throughput-{workers}", [f"w{i}" for i in range(workers)], pin)
    try:
        proxy.reset()
        started = time.monotonic()
        batch = [training_job_start(dataset=dataset, config=TrainConfig.from_dict({**JOB, "seed": i}))
                 for i in range(jobs)]  # fmt: skip
        wait_finished(batch)
        seconds = time.monotonic() - started
        sent, received = proxy.reset()
    finally:
        stop(procs)
    return {"jobs_per_min": jobs * 60 / seconds, "seconds": seconds, "sent": sent / jobs, "received": received / jobs}


def sweep_timing(dataset: Any, env: dict[str, str], work: Path, early_stopping: bool) -> dict[str, float]:
    from trainer.models import Sweep, TrainingJob
    from trainer.sweeps.services import sweep_start

    procs = start_workers(env, work / f"sweep-{early_stopping}", ["s0", "s1"], pin=False)
    try:
        base = {**JOB, "epochs": 18, "optimizer": "adam", "schedule": "constant"}
        sweep = sweep_start(dataset=dataset, space={"learning_rate": SWEEP_RATES}, base=base,
                            budget=len(SWEEP_RATES), early_stopping=early_stopping)  # fmt: skip
        while not Sweep.objects.get(pk=sweep.pk).is_finished:
            time.sleep(0.5)
        sweep.refresh_from_db()
    finally:
        stop(procs)
    best = TrainingJob.objects.get(pk=sweep.best_job_id)
    trials = TrainingJob.objects.filter(sweep=sweep)
    return {
        "to_best": (best.finished_at - sweep.created_at).total_seconds(),
        "to_end": (sweep.finished_at - sweep.created_at).total_seconds(),
        "best_score": sweep.best_score or 0.0,
        "stopped": trials.filter(stopped_at_rung__isnull=False).count(),
        "epochs": sum(len(t.history) for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per throughput run (default 8)")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="workers on any CPU (default: worker n on CPU n)")
    parser.add_argument("--sqlite", action="store_true", help="the embedded database instead of PostgreSQL")
    parser.add_argument("--keep", type=Path, help="an empty folder to work in and leave behind (the workers' logs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = args.keep or Path(tmp)
        s3, env, proxy = setup(work, args.sqlite)
        try:
            dataset = colour_dataset()
            pin = not args.no_pin
            one = throughput(dataset, env, work, proxy, 1, args.jobs, pin)
            two = throughput(dataset, env, work, proxy, 2, args.jobs, pin)
            print(f"throughput, {args.jobs} jobs ({JOB['arch']}, {JOB['image_size']} px, {JOB['epochs']} epochs, "
                  f"{dataset.images.count()} images), each worker one TensorFlow thread"
                  f"{', held to a CPU of its own' if pin else ', on any CPU'}:")  # fmt: skip
            print(f"  1 worker : {one['jobs_per_min']:6.2f} jobs/min ({one['seconds']:.0f} s)")
            print(
                f"  2 workers: {two['jobs_per_min']:6.2f} jobs/min ({two['seconds']:.0f} s) "
                f"= {two['jobs_per_min'] / one['jobs_per_min']:.2f}x the 1-worker figure (target >= 1.7x)"
            )
            for label, run in (("1 worker", one), ("2 workers", two)):
                print(f"  storage traffic per job, {label}: {run['sent'] / 2**10:.0f} KiB sent, "
                      f"{run['received'] / 2**10:.0f} KiB read")  # fmt: skip
            if not args.skip_sweep:
                with_asha = sweep_timing(dataset, env, work, early_stopping=True)
                without = sweep_timing(dataset, env, work, early_stopping=False)
                print(f"sweep, {len(SWEEP_RATES)} trials of 18 epochs on 2 workers (learning rates {SWEEP_RATES}):")
                for label, run in (("without early stopping", without), ("with successive halving", with_asha)):
                    print(f"  {label:24}: best trial done after {run['to_best']:5.1f} s, sweep after "
                          f"{run['to_end']:5.1f} s, {run['epochs']} epochs trained, {run['stopped']} stopped at a "
                          f"rung, best val accuracy {run['best_score']:.3f}")  # fmt: skip
                end, best = with_asha["to_end"] / without["to_end"], with_asha["to_best"] / without["to_best"]
                print(f"  successive halving: time to the sweep's end {end:.2f}x, to its best trial {best:.2f}x")
        finally:
            s3.stop()


if __name__ == "__main__":
    main()
