"""Writes of data quality: start an analysis, run it on a worker, and act on what it found
(keep one image of a near-duplicate group, move a group into one split).

A run is a row (trainer.models.QualityRun) with the lifecycle of every background run
(classifier_site.runs). The worker computes every image's vector (reusing a training
job's feature cache where one holds them), stores them with their index, writes its
findings onto the Image rows (label issues, outliers: data the workbench filters by
without importing this) and the rest into the run's report. TensorFlow loads inside
`quality_run` only.
"""

import logging
from functools import partial

from celery import Task
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.db import transaction

from classifier_site.runs import Lifecycle, RunStatus, describe_error
from datasets.models import Dataset
from datasets.services import images_delete, images_split_set
from trainer.models import QUALITY_STALE, QualityRun
from trainer.quality.analysis import QualityRefused, RunLost, analyse, choose_backbone

logger = logging.getLogger(__name__)


def _task() -> Task:
    from trainer.tasks import analyse_dataset

    return analyse_dataset


RUNS = Lifecycle(QualityRun, _task, heartbeat=True)


def quality_start(
    *, dataset: Dataset, backbone: str = "", user: User | None = None, enqueue: bool = True
) -> QualityRun:
    """Queue an analysis of `dataset` with `backbone` (default: the one its latest
    transfer-learning job used, else the strongest installed), for a `default` worker."""
    chosen = choose_backbone(dataset, backbone)
    runs = QualityRun.objects.filter(dataset=dataset)
    RUNS.fail_stale(runs, after=QUALITY_STALE)
    create = partial(QualityRun.objects.create, dataset=dataset, backbone=chosen.name, image_size=chosen.image_size,
                     created_by=user)  # fmt: skip
    run: QualityRun = RUNS.start_one(runs, create, enqueue=enqueue, busy=f"{dataset.name} is already being analysed",
                                     refusal=QualityRefused)  # fmt: skip
    return run


def quality_run(*, run_id: int) -> QualityRun | None:
    """Analyse a queued run's dataset (the Celery task and the command call this); None
    when the row is gone (its dataset was deleted)."""
    if not RUNS.claim(run_id):
        logger.info("quality run %s is not queued; nothing to do (duplicate delivery?)", run_id)
        return QualityRun.objects.filter(pk=run_id).first()
    run = QualityRun.objects.select_related("dataset").get(pk=run_id)
    try:
        fields = analyse(run, still_running=lambda **progress: bool(RUNS.running(run_id).update(**progress)))
    except RunLost:
        logger.warning("quality run %s was deleted or failed meanwhile; stopped", run_id)
    except Exception as exc:
        logger.exception("quality run %s failed", run_id)
        RUNS.finish(run_id, RunStatus.FAILED, error=describe_error(exc))
    else:
        if RUNS.finish(run_id, RunStatus.SUCCEEDED, **fields):
            _forget_older(run)
    return QualityRun.objects.filter(pk=run_id).first()


def _forget_older(run: QualityRun) -> None:
    """Only the newest analysis answers "more like this": older ones' stored vectors go."""
    older = QualityRun.objects.filter(dataset=run.dataset_id, pk__lt=run.pk).exclude(index_file="", extractor_file="")
    for pk, index, extractor in older.values_list("pk", "index_file", "extractor_file"):
        stored = {"index_file": index, "extractor_file": extractor}
        cleared = {"index_file": "", "index_sha256": "", "extractor_file": "", "extractor_sha256": ""}
        if QualityRun.objects.filter(pk=pk, **stored).update(**cleared):
            for name in filter(None, stored.values()):
                transaction.on_commit(partial(default_storage.delete, name))


def duplicates_keep_one(*, run: QualityRun, group: int, keep: int) -> int:
    """Delete every image of the run's near-duplicate `group` but `keep`; how many went."""
    members = _group(run, group)
    if keep not in members:
        raise QualityRefused(f"Image {keep} is not in group {group}.")
    return images_delete(dataset=run.dataset, ids=[pk for pk in members if pk != keep])


def duplicates_move(*, run: QualityRun, group: int, split: str) -> int:
    """Put every image of the group in `split` (the copies then leak no score); how many moved."""
    return images_split_set(dataset=run.dataset, ids=_group(run, group), split=split)


def _group(run: QualityRun, group: int) -> list[int]:
    groups: list[list[int]] = run.report.get("groups", [])
    if not 0 <= group < len(groups):
        raise QualityRefused(f"Analysis {run.pk} has no near-duplicate group {group}.")
    return groups[group]
