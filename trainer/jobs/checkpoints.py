"""A running job's checkpoints in media storage, so that a job re-queued to another
worker (no disk in common) resumes where the last one left off.

Keras' BackupAndRestore writes the checkpoints into the worker's own folder
(`checkpoint_dir`); that folder is a cache. At most every TRAIN_CHECKPOINT_UPLOAD_SECONDS
(and always before a hand-back) the folder goes to storage as one tar, named by its
SHA-256 on the job's row, conditional on the attempt still owning the job. An attempt
starting on a worker whose folder is not the stored checkpoint fetches it, checks the
hash and unpacks it. A checkpoint that is gone or damaged costs the run its progress,
never the job: it starts from the beginning, saying why."""

import logging
import shutil
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

from classifier_site.runs import RunStatus
from trainer.jobs.stored_folders import folder_fetch, folder_store
from trainer.models import TrainingJob

logger = logging.getLogger(__name__)

MARKER = ".stored-sha256"  # in the local folder: which stored checkpoint it holds (or made)


def checkpoint_dir(job_id: int) -> Path:
    """Where a job's per-epoch checkpoints live on this worker (a cache of the stored ones)."""
    return Path(settings.TRAIN_WORK_DIR) / "checkpoints" / f"job-{job_id}"


def checkpoint_upload(job_id: int, attempt: int) -> bool:
    """Store this worker's checkpoint folder as the job's checkpoint; False when there is
    nothing to store or the attempt no longer owns the job (the file is then removed)."""
    folder = checkpoint_dir(job_id)
    if not any(p.name != MARKER for p in folder.glob("*")):
        return False
    name, sha = folder_store(folder, lambda sha: f"{_stored_prefix(job_id)}/{sha[:16]}.tar", frozenset({MARKER}))
    old = TrainingJob.objects.filter(pk=job_id).values_list("checkpoint_file", flat=True).first()
    running = TrainingJob.objects.filter(pk=job_id, status=RunStatus.RUNNING, attempts=attempt)
    if not running.update(checkpoint_file=name, checkpoint_sha256=sha):
        default_storage.delete(name)
        return False
    (folder / MARKER).write_text(sha)
    if old and old != name:
        default_storage.delete(old)
    return True


def checkpoint_restore(job: TrainingJob) -> str:
    """Make this worker's folder hold the job's stored checkpoint, unless it already
    holds it or a newer one made here. What happened, in words ("" when nothing did)."""
    folder = checkpoint_dir(job.pk)
    if not job.checkpoint_file:
        return ""
    marker = folder / MARKER
    if marker.exists() and marker.read_text() == job.checkpoint_sha256:
        return ""  # this worker made it or fetched it, and may have gone further since
    try:
        folder_fetch(job.checkpoint_file, job.checkpoint_sha256, folder)
        (folder / MARKER).write_text(job.checkpoint_sha256)
    except Exception as exc:  # gone, damaged, storage out of reach (S3 raises its own): start over
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning("job %s: stored checkpoint %s unusable: %s", job.pk, job.checkpoint_file, exc)
        return f"The stored checkpoint could not be used ({exc}); training starts from the beginning."
    return "Fetched its checkpoint from storage."


def checkpoints_remove(job_id: int) -> None:
    """A finished job's checkpoints: this worker's folder and every stored file of the job,
    also one that a worker killed between storing it and naming it on the row left behind."""
    shutil.rmtree(checkpoint_dir(job_id), ignore_errors=True)
    prefix = _stored_prefix(job_id)
    try:
        for name in default_storage.listdir(prefix)[1]:
            default_storage.delete(f"{prefix}/{name}")
    except FileNotFoundError:  # local storage: the job never stored one
        return
    except Exception:  # storage out of reach (S3 raises its own): the job ends; verify_storage lists what is left
        logger.warning("job %s: stored checkpoints not removed", job_id, exc_info=True)


def _stored_prefix(job_id: int) -> str:
    return f"checkpoints/job-{job_id}"
