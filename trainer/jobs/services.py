"""Writes to training jobs: start, run (a worker), cancel, repeat, and the reaper of jobs
whose worker died. The database is the truth about a job: every status change is a
compare-and-set on the row (classifier_site.runs), so a duplicate task delivery or a
late cancel can never move a job backwards. A finished job's model goes to the registry
(trainer.registry.services.model_version_create)."""

import importlib.metadata
import logging
import os
import platform
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from celery import Task
from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from classifier_site.errors import Refused
from classifier_site.runs import Lifecycle, RunStatus, describe_error
from datasets.models import Dataset, Split
from datasets.selectors import dataset_snapshot
from trainer.jobs.checkpoints import checkpoint_dir, checkpoint_restore, checkpoint_upload, checkpoints_remove
from trainer.ml.config import ConfigError, TrainConfig
from trainer.ml.reporting import Interrupted
from trainer.models import TrainingJob
from trainer.registry.services import model_version_create
from trainer.sweeps.trials import sweep_settle, trial_verdict

logger = logging.getLogger(__name__)


class TrainingRefused(Refused):
    """The job cannot be started; the message tells the admin what to fix."""


def training_job_start(
    *,
    dataset: Dataset,
    config: TrainConfig,
    user: User | None = None,
    enqueue: bool = True,
    snapshot: dict[str, Any] | None = None,
    request_key: str = "",
) -> TrainingJob:
    """Freeze the dataset's snapshot (or reuse `snapshot`, to repeat a run), record
    the job and (unless the caller runs it itself) put it on the `gpu` queue once
    the transaction commits. A `request_key` this user sent before gets that job
    back instead (`job.replayed` is True), even when both requests race."""
    if request_key and (earlier := _job_of_key(user, request_key)):
        return earlier
    if snapshot is None:
        frozen = dataset_snapshot(dataset=dataset)
        if len(frozen.classes) < 2:
            raise TrainingRefused("Training needs labelled images in at least two classes.")
        if frozen.count(Split.TRAIN) == 0:
            raise TrainingRefused("The dataset has no labelled images in its train split.")
        snapshot = frozen.as_dict()
    try:
        with transaction.atomic():  # a savepoint: a racing twin's insert fails alone
            job = TrainingJob.objects.create(
                dataset=dataset,
                config=config.to_dict(),
                snapshot=snapshot,
                snapshot_hash=str(snapshot.get("hash", "")),
                created_by=user,
                request_key=request_key[:64],
                events=[_event("Queued.")],
            )
    except IntegrityError:
        if request_key and (earlier := _job_of_key(user, request_key)):
            return earlier
        raise
    if enqueue:
        transaction.on_commit(lambda: _enqueue(job))
    return job


def _job_of_key(user: User | None, request_key: str) -> TrainingJob | None:
    job = TrainingJob.objects.filter(created_by=user, request_key=request_key[:64]).first()
    if job is not None:
        job.replayed = True
    return job


def training_job_repeat(*, job: TrainingJob, user: User | None = None) -> TrainingJob:
    """Run again: the same resolved config on the same frozen snapshot."""
    source = TrainingJob.objects.get(pk=job.pk)  # list selectors defer the snapshot
    return training_job_start(
        dataset=source.dataset, config=TrainConfig.from_dict(source.config), user=user, snapshot=source.snapshot
    )


def _event(message: str) -> dict[str, str]:
    return {"at": timezone.now().isoformat(timespec="seconds"), "message": message}


def _enqueue(job: TrainingJob) -> None:
    if RUNS.publish(job.pk):
        TrainingJob.objects.filter(pk=job.pk, status=RunStatus.QUEUED).update(published_at=timezone.now())
    else:
        job.refresh_from_db()


def _send_again(job_id: int) -> None:
    """Publish a job the reaper or a hand-back put back in the queue. Unlike a new job's
    first message, a broker that is down does not fail it: the job stays queued and
    unstamped, and the reaper's next pass sends it again."""
    _send_all([(job_id, False)])


def _send_all(sends: list[tuple[int, bool]]) -> None:
    """Send (job id, is a retry) in order, stopping at the first broker error: the broker
    is down, and each further try would cost its own timeout (with a long queue, minutes of
    one reaper pass). What is left stays queued and unstamped for the next pass. A retry's
    failure is not logged again: an outage of an hour would otherwise add an event a pass."""
    for done, (job_id, _) in enumerate(sends):
        if error := RUNS.resend(job_id):
            for unsent, retry in sends[done:]:
                queued = TrainingJob.objects.filter(pk=unsent, status=RunStatus.QUEUED)
                if queued.update(published_at=None) and not retry:
                    _log(unsent, None, f"{error} The reaper sends it again at its next pass.")
            return
        TrainingJob.objects.filter(pk=job_id, status=RunStatus.QUEUED).update(published_at=timezone.now())


def training_job_cancel(*, job: TrainingJob) -> TrainingJob:
    """A queued job is cancelled at once; a running one stops within about a second
    (its next progress write), at its current batch."""
    jobs = TrainingJob.objects.filter(pk=job.pk)
    jobs.filter(status=RunStatus.RUNNING).update(cancel_requested=True)
    if jobs.filter(status=RunStatus.QUEUED).update(
        status=RunStatus.CANCELLED, finished_at=timezone.now(), cancel_requested=True
    ):
        _settle_sweep_on_commit(job.pk)
    job.refresh_from_db()
    return job


def _claim(job_id: int, worker: str = "") -> int | None:
    """Compare-and-set (runs.Lifecycle.claim): only one worker ever moves a job from
    queued to running. Returns the attempt number this worker now owns, or None."""
    if not RUNS.claim(job_id, worker=worker[:200]):
        return None
    job = TrainingJob.objects.only("attempts", "events").get(pk=job_id)
    _log(job_id, job.attempts, f"Attempt {job.attempts} started on {socket.gethostname()}.")
    return job.attempts


def _running(job_id: int, attempt: int) -> QuerySet[TrainingJob]:
    """The job, only while this attempt still owns it."""
    return TrainingJob.objects.filter(pk=job_id, status=RunStatus.RUNNING, attempts=attempt)


def _log(job_id: int, attempt: int | None, message: str) -> None:
    jobs = TrainingJob.objects.filter(pk=job_id)
    if attempt is not None:
        jobs = jobs.filter(attempts=attempt)
    with transaction.atomic():
        job = jobs.select_for_update().only("events").first()
        if job is not None:
            jobs.update(events=[*job.events, _event(message)][-100:])


def _finish(job_id: int, status: str, attempt: int | None = None, **fields: Any) -> bool:
    """End the job, only while `attempt` (when given) still owns it."""
    jobs = TrainingJob.objects.filter(pk=job_id)
    return RUNS.finish(job_id, status, only=jobs if attempt is None else jobs.filter(attempts=attempt), **fields)


def _finished(job_id: int, status: str, fields: dict[str, Any]) -> None:
    _log(job_id, None, fields.get("error") or f"{RunStatus(status).label}.")
    TrainingJob.objects.filter(pk=job_id).update(checkpoint_file="", checkpoint_sha256="")
    checkpoints_remove(job_id)
    _settle_sweep_on_commit(job_id)


def _settle_sweep_on_commit(job_id: int) -> None:
    # After the commit: the sweep's best is chosen among committed results, and a failed
    # promotion cannot roll this job's own ending back.
    if sweep_id := TrainingJob.objects.filter(pk=job_id).values_list("sweep_id", flat=True).first():
        transaction.on_commit(partial(sweep_settle, sweep_id=sweep_id))


def _claim_fields() -> dict[str, Any]:
    """A job's own columns in the claiming UPDATE: this host, the next attempt, a fresh step count."""
    return {
        "host": socket.gethostname()[:200],
        "attempts": F("attempts") + 1,
        "step": 0,
        "images_per_second": None,
        "handback_requested": False,
        "progress_at": timezone.now(),
    }


def _task() -> Task:
    from trainer.tasks import train_job

    return train_job


RUNS = Lifecycle(TrainingJob, _task, heartbeat=True, claim_fields=_claim_fields, on_finish=_finished)


def training_job_run(*, job_id: int, worker: str = "", kill_on_stall: bool = False) -> None:
    """Run a claimed job to its end. Called by the Celery task in a worker process
    (`worker` is its node name); `kill_on_stall` ends this process when the run stops
    moving (a hung step), so the worker can take the next job."""
    attempt = _claim(job_id, worker)
    if attempt is None:
        logger.info("job %s is not queued; nothing to do (duplicate delivery?)", job_id)
        return
    job = TrainingJob.objects.select_related("dataset").get(pk=job_id)
    watch = Watch()
    with Heartbeat(job_id, attempt, watch, on_stall=_kill_this_process if kill_on_stall else None):
        try:
            _train(job, attempt, watch)
        except Exception as exc:
            logger.exception("job %s failed", job_id)
            _finish(job_id, RunStatus.FAILED, attempt, error=_describe(exc))


def _kill_this_process() -> None:
    # A hung step cannot be interrupted from Python; the worker's pool starts a fresh process.
    os.kill(os.getpid(), signal.SIGKILL)


def _describe(exc: Exception) -> str:
    from trainer.ml.weights import WeightsMissing

    return describe_error(exc, WeightsMissing, ConfigError)  # those already say what to do


def _train(job: TrainingJob, attempt: int, watch: "Watch") -> None:
    # TensorFlow loads here, in the worker, never in web processes.
    from trainer.ml.device import configure_devices, cpu_has_bf16
    from trainer.ml.train import train

    device = configure_devices()
    on_gpu = device != "CPU"
    requested = _recipe(job, attempt, TrainConfig.from_dict(job.config), on_gpu=on_gpu)
    backbone = _backbone(requested)  # a missing file fails the job now, not after loading the data
    _running(job.pk, attempt).update(device=device[:200], environment=package_versions())
    reporter = JobReporter(job.pk, attempt, requested.total_epochs, job.history, transfer=backbone is not None,
                           watch=watch, sweep_id=job.sweep_id)  # fmt: skip
    try:
        reporter.phase("decoding", 0, len(job.snapshot["images"]))
        data = _load_data(job, requested.image_size, progress=partial(reporter.phase, "decoding"))
        config = requested.resolve(on_gpu=on_gpu, class_counts=data.class_counts(), cpu_bf16=cpu_has_bf16())
        _running(job.pk, attempt).update(config=config.to_dict())  # what "run again" repeats
        features = _features(job, data, config, backbone, reporter) if backbone else None
        _trim_cache()
        if said := checkpoint_restore(job):  # re-queued from another worker: its checkpoint
            _log(job.pk, attempt, said)
        with tempfile.TemporaryDirectory(prefix=f"job-{job.pk}-") as tmp:
            result = train(config, data, Path(tmp), reporter, checkpoint_dir=checkpoint_dir(job.pk), on_gpu=on_gpu,
                           features=features)  # fmt: skip
            if result.stopped_early:
                raise Interrupted
            if reporter.lost:
                logger.warning("job %s: attempt %s no longer owns the job; result dropped", job.pk, attempt)
                return
            _log_transfer(job.pk, attempt, result.metrics)
            _record_success(job, attempt, config, data, result)
    except Interrupted:
        _stopped(job.pk, attempt, reporter)


def _stopped(job_id: int, attempt: int, reporter: "JobReporter") -> None:
    """The run stopped because `reporter.should_stop()` said so; end the attempt by why."""
    reason = reporter.stop_reason
    if reason == "lost":
        logger.warning("job %s: attempt %s no longer owns the job; result dropped", job_id, attempt)
    elif reason == "handback":
        _store_checkpoint(job_id, attempt)  # the next worker may be another host
        _hand_back(job_id, attempt)
    elif reason == "rung":  # its sweep's successive halving: behind the others at this epoch
        _finish(job_id, RunStatus.CANCELLED, attempt, error=reporter.rung_verdict, stopped_at_rung=reporter.rung_epoch)
    elif reason == "time limit":
        limit = _duration(settings.TRAIN_TIME_LIMIT)
        _finish(job_id, RunStatus.FAILED, attempt,
                error=f"Stopped: the attempt ran past its time limit of {limit} (TRAIN_TIME_LIMIT).")  # fmt: skip
    else:
        _finish(job_id, RunStatus.CANCELLED, attempt, error="Cancelled by a user.")


def _store_checkpoint(job_id: int, attempt: int) -> None:
    try:
        checkpoint_upload(job_id, attempt)
    except Exception:  # storage out of reach (S3 raises its own): the run goes on; a resume elsewhere loses more
        logger.warning("job %s: checkpoint not stored", job_id, exc_info=True)


def _hand_back(job_id: int, attempt: int) -> None:
    """Back to the queue with its checkpoints, for another worker (or this one, restarted)."""
    with transaction.atomic():  # the status and its reason land together
        handed = _running(job_id, attempt).update(status=RunStatus.QUEUED, handback_requested=False, worker="")
        if handed:
            epoch = TrainingJob.objects.only("epoch").get(pk=job_id).epoch
            resume = f"after epoch {epoch}" if epoch else "from the start"
            _log(job_id, attempt, f"Handed back to the queue: its worker is shutting down. It resumes {resume}.")
    if handed:
        _send_again(job_id)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def _recipe(job: TrainingJob, attempt: int, requested: TrainConfig, *, on_gpu: bool) -> TrainConfig:
    """`auto` settled on the data, the device and the installed backbones; the
    reason goes on the job. (A re-queued attempt finds the chosen config stored.)"""
    if requested.arch != "auto":
        return requested
    from trainer.jobs.snapshots import snapshot_stats
    from trainer.ml import backbones
    from trainer.ml.recipe import choose

    recipe = choose(requested, snapshot_stats(job.snapshot), on_gpu=on_gpu, installed=backbones.installed())
    _running(job.pk, attempt).update(recipe=recipe.reason, config=recipe.config.to_dict())
    _log(job.pk, attempt, f"auto chose {recipe.reason}.")
    return recipe.config


def _backbone(config: TrainConfig) -> Any:
    if not config.is_pretrained:
        return None
    from trainer.ml import backbones

    backbone = backbones.get(config.arch)
    backbones.installed_path(backbone)
    return backbone


def _trim_cache() -> None:
    from trainer.jobs.snapshots import training_cache_trim

    training_cache_trim()  # once the job's images and features are in place, both just used


def _features(job: TrainingJob, data: Any, config: TrainConfig, backbone: Any, reporter: "JobReporter") -> Any:
    from trainer.jobs.snapshots import snapshot_features

    features = snapshot_features(job.snapshot, data, backbone, image_size=config.image_size,
                                 views=config.feature_views, progress=partial(reporter.phase, "features"))  # fmt: skip
    if features.reused:
        where = "storage (stored by another worker)" if features.fetched else "the cache"
        _log(job.pk, reporter.attempt, f"Features reused from {where} (same snapshot, backbone and size).")
    return features


def _log_transfer(job_id: int, attempt: int, metrics: dict[str, Any]) -> None:
    transfer = metrics.get("transfer")
    if not transfer or transfer.get("fine_tuned_val_accuracy") is None:
        return
    head, tuned = transfer["head_val_accuracy"], transfer["fine_tuned_val_accuracy"]
    verdict = "kept" if transfer["kept"] == "fine-tuned" else "discarded"
    _log(job_id, attempt, f"Fine-tuning {verdict}: validation accuracy {tuned:.3f}, the frozen head's {head:.3f}.")


def _record_success(job: TrainingJob, attempt: int, config: TrainConfig, data: Any, result: Any) -> None:
    """The model file, its evaluation report and the job's success, all or nothing."""
    from trainer.reports.services import Predictions, evaluation_charts, evaluation_record

    if "transfer" in result.metrics:  # what scoring checks before it reuses this job's cached features
        result.metrics["transfer"]["backbone_key"] = _backbone_key(config)
    split = result.metrics.get("evaluated_on", "test")
    evaluated = data.test if split == "test" else data.val
    charts = evaluation_charts(result.metrics, data.classes, prefix=f"evaluations/job-{job.pk}")
    with transaction.atomic():
        version = model_version_create(job=job, model_dir=result.model_dir, metrics=result.metrics, config=config,
                                       backbone_sha256=_backbone_sha256(config))  # fmt: skip
        predictions = Predictions.of(evaluated, result.probabilities)
        evaluation_record(
            version=version,
            dataset=job.dataset,
            split=split,
            metrics=result.metrics,
            predictions=predictions,
            charts=charts,
        )
        epochs = len(result.history.get("loss", [])) or config.total_epochs  # early stopping may end sooner
        _finish(job.pk, RunStatus.SUCCEEDED, attempt, progress=1.0, epoch=epochs, phase="")


def _backbone_sha256(config: TrainConfig) -> str:
    if not config.is_pretrained:
        return ""
    from trainer.jobs.snapshots import backbone_sha256
    from trainer.ml import backbones

    return backbone_sha256(backbones.get(config.arch))


def _backbone_key(config: TrainConfig) -> str:
    from trainer.jobs.snapshots import backbone_key
    from trainer.ml import backbones

    return backbone_key(backbones.get(config.arch))


def _load_data(job: TrainingJob, image_size: int, progress: Any = None) -> Any:
    from trainer.jobs.snapshots import snapshot_arrays

    return snapshot_arrays(job.snapshot, image_size, progress=progress)


def package_versions() -> dict[str, str]:
    """What produced a model: Python and the packages that shape its numbers."""
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "scikit-learn", "pillow", "django", "celery"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class Watch:
    """When the run last moved (a batch, a decoded image, a phase begun): what the watchdog
    in the heartbeat thread judges a hung step by. The limit fits the job: never under
    TRAIN_STALL_SECONDS, and TRAIN_STALL_FACTOR times the longest wait between moves so far."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.longest = 0.0
        self.phase = "starting"

    def moved(self, phase: str) -> None:
        now = time.monotonic()
        self.longest, self.last, self.phase = max(self.longest, now - self.last), now, phase

    def stalled_for(self) -> float:
        return time.monotonic() - self.last

    def stall_limit(self) -> float:
        return max(settings.TRAIN_STALL_SECONDS, settings.TRAIN_STALL_FACTOR * self.longest)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Heartbeat:
    """A thread that stamps the job's heartbeat every TRAIN_HEARTBEAT_INTERVAL seconds while
    this process lives and the run still moves, also through long data loading and evaluation;
    the reaper re-queues jobs whose stamp grows old. It is also the watchdog: a run that has
    not moved for its stall limit (a hung read, a deadlocked step) gives its attempt up with
    the reason, stops beating, and `on_stall` (in a worker: kill this process) frees the slot."""

    def __init__(
        self, job_id: int, attempt: int, watch: Watch | None = None, *, on_stall: Callable[[], None] | None = None
    ) -> None:
        self.job_id, self.attempt = job_id, attempt
        self.watch, self.on_stall = watch, on_stall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
        # Inside a caller's transaction (tests, an inline run) another connection
        # could not see the row; progress writes keep the stamp fresh there.
        if not transaction.get_connection().in_atomic_block:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-job-{self.job_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(settings.TRAIN_HEARTBEAT_INTERVAL):
                if self.watch is not None and self.watch.stalled_for() > self.watch.stall_limit():
                    self._give_up(self.watch)
                    return
                try:
                    _running(self.job_id, self.attempt).update(heartbeat_at=timezone.now())
                except DatabaseError:
                    logger.warning("job %s: heartbeat failed; retrying", self.job_id, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connection

    def _give_up(self, watch: Watch) -> None:
        seconds, limit = watch.stalled_for(), watch.stall_limit()
        logger.error("job %s: no progress for %.0f s while %s; attempt given up", self.job_id, seconds, watch.phase)
        why = f"no progress for {seconds:.0f} s while {watch.phase} (a hung step; the limit is {limit:.0f} s)"
        _end_attempt(self.job_id, self.attempt, why)
        if self.on_stall is not None:
            self.on_stall()


def _end_attempt(job_id: int, attempt: int, why: str) -> None:
    """Re-queue (or, after the last attempt, fail) an attempt that can go no further."""
    if attempt >= settings.TRAIN_MAX_ATTEMPTS:
        error = f"Failed: {why}, on attempt {attempt} of {settings.TRAIN_MAX_ATTEMPTS}; not retrying."
        _finish(job_id, RunStatus.FAILED, attempt, error=error)
        return
    with transaction.atomic():  # the status and its reason land together
        requeued = _running(job_id, attempt).update(status=RunStatus.QUEUED, worker="")
        if requeued:
            _log(job_id, attempt, f"Re-queued: {why}.")
    if requeued:
        _send_again(job_id)


def training_jobs_hand_back(*, worker: str) -> int:
    """A worker is shutting down (SIGTERM): ask its running jobs to checkpoint and go back
    to the queue. They stop at their next progress write, within about a second."""
    return TrainingJob.objects.filter(status=RunStatus.RUNNING, worker=worker).update(handback_requested=True)


# Set in a worker's training process by its SIGTERM handler (trainer.tasks): the same as
# handback_requested, for a signal sent to the process itself rather than to the worker.
SHUTTING_DOWN = threading.Event()

TRANSFER_EPOCH_SHARE = 0.15  # of a transfer job's progress bar: the rest is the feature pass
STOP_CHECK_SECONDS = 1.0  # how often a run reads its cancel and hand-back flags


class JobReporter:
    """Writes a running job's progress to its row, and reads why it should stop: a cancel,
    a hand-back (its worker shuts down), its time limit, or another attempt owning it."""

    def __init__(
        self,
        job_id: int,
        attempt: int,
        epochs: int,
        history: list[dict[str, float]] | None = None,
        *,
        transfer: bool = False,
        watch: Watch | None = None,
        sweep_id: int | None = None,
    ) -> None:
        self.job_id, self.attempt, self.epochs = job_id, attempt, epochs
        self.sweep_id = sweep_id  # a sweep's trial: judged at its rungs
        self.rung_verdict, self.rung_epoch = "", 0
        self.history: list[dict[str, float]] = list(history or [])
        self.lost = False  # the reaper gave the job to another attempt
        self.stop_reason = ""  # why should_stop() said yes: cancel, handback, time limit, lost, rung
        # Transfer jobs spend most of their time in the feature pass; epochs on features take seconds.
        self.share = TRANSFER_EPOCH_SHARE if transfer else 1.0
        self.last_phase_write = self.last_check = self.last_upload = 0.0
        self.watch = watch or Watch()

    def phase(self, name: str, done: int, total: int) -> None:
        """What the job is doing now (decoding, features, head, fine-tuning, evaluating), at most a write a second."""
        now = time.monotonic()
        self.watch.moved(_PHASE_WORDS.get(name, name))
        if 0 < done < total and now - self.last_phase_write < 1.0:
            return
        self.last_phase_write = now
        fields: dict[str, Any] = {"phase": name, "step": done, "steps": total}
        if name == "features" and total:
            fields["progress"] = (1 - self.share) * done / total
        self._update(**fields)
        if self.should_stop():
            raise Interrupted  # a cancel takes effect within a second, not after the whole phase

    def start(self, epoch: int, steps: int) -> None:
        if epoch:
            _log(self.job_id, self.attempt, f"Resumed from the checkpoint after epoch {epoch}.")
        self.history = [h for h in self.history if h.get("epoch", 0) <= epoch]
        phase = {} if self.share < 1 else {"phase": ""}  # from scratch: epochs from here on, not decoding
        self._update(epoch=epoch, step=0, steps=steps, history=self.history, progress=self._progress(epoch), **phase)

    def batch_end(self, epoch: int, step: int, steps: int, images_per_second: float) -> None:
        progress = self._progress(epoch + step / max(steps, 1))
        self._update(step=step, steps=steps, images_per_second=images_per_second, progress=progress)

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.history = [h for h in self.history if h.get("epoch", 0) <= epoch] + [{"epoch": epoch + 1, **logs}]
        self._update(epoch=epoch + 1, history=self.history, progress=self._progress(epoch + 1))
        if self.sweep_id and not self.stop_reason:
            self._judge_at_rung(epoch + 1, logs)
        now = time.monotonic()
        if now - self.last_upload >= settings.TRAIN_CHECKPOINT_UPLOAD_SECONDS:
            self.last_upload = now
            _store_checkpoint(self.job_id, self.attempt)  # Keras' callback saved this epoch first

    def _judge_at_rung(self, epoch: int, logs: dict[str, float]) -> None:
        assert self.sweep_id is not None
        if verdict := trial_verdict(sweep_id=self.sweep_id, epoch=epoch, epochs=self.epochs, logs=logs):
            self.stop_reason, self.rung_verdict, self.rung_epoch = "rung", verdict, epoch

    def _progress(self, epochs: float) -> float:
        return min(1 - self.share + self.share * epochs / self.epochs, 1.0)

    def should_stop(self) -> bool:
        """Read at most once a second (each is a query); a reason once given stays."""
        now = time.monotonic()
        if self.stop_reason or now - self.last_check < STOP_CHECK_SECONDS:
            return bool(self.stop_reason)
        self.last_check = now
        self.stop_reason = self._reason()
        return bool(self.stop_reason)

    def _reason(self) -> str:
        if self.lost:
            return "lost"
        if self.watch.elapsed() > settings.TRAIN_TIME_LIMIT:
            return "time limit"
        flags = TrainingJob.objects.filter(pk=self.job_id).values("cancel_requested", "handback_requested").first()
        if flags is None or flags["cancel_requested"]:
            return "cancel"
        return "handback" if flags["handback_requested"] or SHUTTING_DOWN.is_set() else ""

    def _update(self, **fields: Any) -> None:
        now = timezone.now()
        self.watch.moved(self.watch.phase if "phase" not in fields else _PHASE_WORDS.get(fields["phase"], "training"))
        if not _running(self.job_id, self.attempt).update(heartbeat_at=now, progress_at=now, **fields):
            self.lost = not _running(self.job_id, self.attempt).exists()


# What the watchdog's message says a run was doing when it stopped moving.
_PHASE_WORDS = {"": "training", "decoding": "decoding images", "features": "computing features",
                "head": "training the head", "fine-tuning": "fine-tuning", "evaluating": "evaluating"}  # fmt: skip


@dataclass
class Reaped:
    requeued: list[int]
    failed: list[int]
    cancelled: list[int]
    republished: list[int] = field(default_factory=list)


def training_jobs_reap(*, now: datetime | None = None) -> Reaped:
    """Find running jobs whose heartbeat stopped (their worker died, or was stopped) and
    re-queue them to resume from their checkpoint, up to TRAIN_MAX_ATTEMPTS attempts; then
    fail them saying why. A stopped job with a cancel request is cancelled, and one whose
    attempt outlived the hard time limit is failed (the worker killed it: trying again
    would only run out again). A broker that is down delays the messages, never the
    reaping: jobs go back to `queued` and are sent once it answers."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.TRAIN_HEARTBEAT_TIMEOUT)
    hard_limit = timedelta(seconds=settings.TRAIN_TIME_LIMIT + settings.TRAIN_TIME_LIMIT_GRACE)
    reaped = Reaped([], [], [])
    stale = TrainingJob.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=stale_before)
    for job in stale.only("pk", "attempts", "heartbeat_at", "started_at", "cancel_requested", "host"):
        since = f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
        silent = f"the worker on {job.host or 'an unknown host'} stopped responding (no heartbeat since {since})"
        if job.cancel_requested:
            if _finish(job.pk, RunStatus.CANCELLED, job.attempts, error=f"Cancelled; {silent}."):
                reaped.cancelled.append(job.pk)
        elif job.started_at and now - job.started_at > hard_limit:
            limit = _duration(settings.TRAIN_TIME_LIMIT)
            error = f"Failed: the attempt ran past its time limit of {limit} (TRAIN_TIME_LIMIT) and was stopped."
            if _finish(job.pk, RunStatus.FAILED, job.attempts, error=error):
                reaped.failed.append(job.pk)
        elif job.attempts >= settings.TRAIN_MAX_ATTEMPTS:
            error = f"Failed: {silent} on attempt {job.attempts} of {settings.TRAIN_MAX_ATTEMPTS}; not retrying."
            if _finish(job.pk, RunStatus.FAILED, job.attempts, error=error):
                reaped.failed.append(job.pk)
        elif (
            _running(job.pk, job.attempts)
            .filter(heartbeat_at__lt=stale_before)
            .update(status=RunStatus.QUEUED, published_at=None)
        ):
            _log(job.pk, job.attempts, f"Re-queued: {silent}.")
            reaped.requeued.append(job.pk)
    again = _republish_lost(now, sent_now=reaped.requeued)
    reaped.republished = [pk for pk, _ in again]
    transaction.on_commit(partial(_send_all, [(pk, False) for pk in reaped.requeued] + again))
    return reaped


UNSENT_GRACE = timedelta(seconds=60)  # a job made with enqueue=False is claimed by its maker within this


def _republish_lost(now: datetime, sent_now: list[int]) -> list[tuple[int, bool]]:
    """Queued jobs whose message went out TRAIN_REPUBLISH_SECONDS ago and was never
    claimed: the message may be lost, so send it again; and jobs whose message could not
    be sent (the broker was down), at every pass until it goes (a retry). A job
    that is only waiting behind others gets a duplicate, which its claim (compare-and-set)
    makes harmless. Jobs re-queued in this pass (`sent_now`) are sent once, not twice."""
    before = now - timedelta(seconds=settings.TRAIN_REPUBLISH_SECONDS)
    waiting = (
        TrainingJob.objects.filter(status=RunStatus.QUEUED)
        .exclude(pk__in=sent_now)
        .filter(Q(published_at__lt=before) | Q(published_at__isnull=True, created_at__lt=now - UNSENT_GRACE))
    )
    republished = []
    for job in waiting.only("pk", "attempts", "published_at"):
        # Conditional on the stamp it was read with: two reapers send one message, not two.
        if TrainingJob.objects.filter(pk=job.pk, status=RunStatus.QUEUED, published_at=job.published_at).update(
            published_at=now
        ):
            if job.published_at is not None:
                minutes = (now - job.published_at).total_seconds() / 60
                _log(job.pk, job.attempts, f"Sent to the queue again: no worker took it in {minutes:.0f} minutes.")
            republished.append((job.pk, job.published_at is None))
    return republished
