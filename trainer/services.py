"""Writes to training jobs and model versions. The database is the truth about a
job: every status change is a compare-and-set on the row, so a duplicate task
delivery or a late cancel can never move a job backwards."""

import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from classifier_site.queueing import publish
from datasets.models import Dataset, Split
from datasets.selectors import dataset_snapshot
from trainer.ml.config import TrainConfig
from trainer.ml.files import sha256_file
from trainer.models import JobStatus, ModelVersion, TrainingJob

logger = logging.getLogger(__name__)


class TrainingRefused(Exception):
    """The job cannot be started; the message tells the admin what to fix."""


def training_job_start(
    *, dataset: Dataset, config: TrainConfig, user: User | None = None, enqueue: bool = True
) -> TrainingJob:
    """Freeze the dataset's snapshot, record the job and (unless the caller runs it
    itself) put it on the `gpu` queue once the transaction commits."""
    snapshot = dataset_snapshot(dataset=dataset)
    if len(snapshot.classes) < 2:
        raise TrainingRefused("Training needs labelled images in at least two classes.")
    if snapshot.count(Split.TRAIN) == 0:
        raise TrainingRefused("The dataset has no labelled images in its train split.")
    job = TrainingJob.objects.create(
        dataset=dataset, config=config.to_dict(), snapshot=snapshot.as_dict(), created_by=user
    )
    if enqueue:
        transaction.on_commit(lambda: _enqueue(job))
    return job


def _enqueue(job: TrainingJob) -> None:
    from trainer.tasks import train_job

    if error := publish(train_job, job.pk):
        _finish(job.pk, JobStatus.FAILED, error=error)
        job.refresh_from_db()


def training_job_cancel(*, job: TrainingJob) -> TrainingJob:
    """A queued job is cancelled at once; a running one stops after its current epoch."""
    jobs = TrainingJob.objects.filter(pk=job.pk)
    jobs.filter(status=JobStatus.RUNNING).update(cancel_requested=True)
    jobs.filter(status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELLED, finished_at=timezone.now(), cancel_requested=True
    )
    job.refresh_from_db()
    return job


def _claim(job_id: int) -> bool:
    """Conditional UPDATE: only one worker ever moves a job from queued to running."""
    now = timezone.now()
    return bool(
        TrainingJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, host=socket.gethostname()[:200]
        )
    )


def _finish(job_id: int, status: str, **fields: Any) -> bool:
    return bool(
        TrainingJob.objects.filter(pk=job_id, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).update(
            status=status, finished_at=timezone.now(), **fields
        )
    )


def training_job_run(*, job_id: int) -> None:
    """Run a claimed job to its end. Called by the Celery task in a worker process."""
    if not _claim(job_id):
        logger.info("job %s is not queued; nothing to do (duplicate delivery?)", job_id)
        return
    job = TrainingJob.objects.select_related("dataset").get(pk=job_id)
    try:
        _train(job)
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        _finish(job_id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:5000])


def _train(job: TrainingJob) -> None:
    # TensorFlow loads here, in the worker, never in web processes.
    from trainer.ml.device import configure_devices
    from trainer.ml.train import train

    device = configure_devices()
    TrainingJob.objects.filter(pk=job.pk).update(device=device[:200])
    config = TrainConfig.from_dict(job.config)
    data = _load_data(job, config.image_size)
    with tempfile.TemporaryDirectory(prefix=f"job-{job.pk}-") as tmp:
        result = train(config, data, Path(tmp), reporter=JobReporter(job.pk, config.epochs))
        if result.stopped_early:
            _finish(job.pk, JobStatus.CANCELLED, error="Cancelled by a user.")
            return
        with transaction.atomic():
            model_version_create(job=job, model_dir=result.model_dir, metrics=result.metrics, config=config)
            _finish(job.pk, JobStatus.SUCCEEDED, progress=1.0)


def _load_data(job: TrainingJob, image_size: int) -> Any:
    from trainer.snapshots import snapshot_arrays

    return snapshot_arrays(job.snapshot, image_size)


class JobReporter:
    """Writes a running job's progress to its row, and reads its cancel flag."""

    def __init__(self, job_id: int, epochs: int) -> None:
        self.job_id, self.epochs = job_id, epochs
        self.history: list[dict[str, float]] = []

    def batch_end(self, epoch: int, step: int, steps: int, images_per_second: float) -> None:
        progress = (epoch + step / max(steps, 1)) / self.epochs
        self._update(step=step, steps=steps, images_per_second=images_per_second, progress=min(progress, 1.0))

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.history.append({"epoch": epoch + 1, **logs})
        self._update(epoch=epoch + 1, history=self.history, progress=(epoch + 1) / self.epochs)

    def should_stop(self) -> bool:
        return TrainingJob.objects.filter(pk=self.job_id, cancel_requested=True).exists()

    def _update(self, **fields: Any) -> None:
        TrainingJob.objects.filter(pk=self.job_id, status=JobStatus.RUNNING).update(
            heartbeat_at=timezone.now(), **fields
        )


def model_version_create(
    *, job: TrainingJob, model_dir: Path, metrics: dict[str, Any], config: TrainConfig
) -> ModelVersion:
    """Store a finished job's model file and record it; the row names its SHA-256."""
    from trainer.ml.train import MODEL_FILE

    path = model_dir / MODEL_FILE
    sha = sha256_file(path)
    with path.open("rb") as fh:
        name = default_storage.save(f"models/job-{job.pk}/{sha[:16]}.keras", File(fh))
    return ModelVersion.objects.create(
        job=job,
        dataset=job.dataset,
        file=name,
        sha256=sha,
        arch=config.arch,
        image_size=config.image_size,
        classes=job.snapshot["classes"],
        metrics=metrics,
    )


def model_version_promote(*, version: ModelVersion) -> ModelVersion:
    """Make `version` the one served; the unique constraint keeps exactly one promoted."""
    with transaction.atomic():
        ModelVersion.objects.filter(is_promoted=True).exclude(pk=version.pk).update(is_promoted=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_promoted=True)
    version.refresh_from_db()
    return version
