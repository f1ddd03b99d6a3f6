"""Writes to the model registry: recording a finished job's model version, promoting
one version per dataset to serve (behind the macro-F1 gate), rolling back, its
threshold, and the site's default dataset for predictions that name none."""

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from classifier_site.errors import Conflict, Refused
from datasets.models import Dataset
from trainer.ml.config import TrainConfig
from trainer.models import ModelVersion, Promotion, ServingDefault, TrainingJob
from trainer.registry.files import model_file_store, serving_files_store

logger = logging.getLogger(__name__)


class PromotionRefused(Conflict):
    """The promotion gate said no; the message says why and how to force it."""


def model_version_create(
    *, job: TrainingJob, model_dir: Path, metrics: dict[str, Any], config: TrainConfig, backbone_sha256: str = ""
) -> ModelVersion:
    """Record a finished job's model file as a new version (stored by its SHA-256). A
    dataset's first version is promoted at once: a new dataset serves its first model
    without a trip to the registry."""
    from trainer.ml.train import MODEL_FILE

    stored = model_file_store(path=model_dir / MODEL_FILE, job_id=job.pk)
    onnx_file, onnx_check_file = serving_files_store(model_dir=model_dir, stored=stored)
    version = ModelVersion.objects.create(
        job=job,
        dataset=job.dataset,
        file=stored.name,
        sha256=stored.sha256,
        file_size=stored.size,
        onnx_file=onnx_file,
        onnx_check_file=onnx_check_file,
        arch=config.arch,
        image_size=config.image_size,
        classes=job.snapshot["classes"],
        snapshot_hash=job.snapshot_hash or str(job.snapshot.get("hash", "")),
        backbone_sha256=backbone_sha256,
        metrics=metrics,
        rejection_threshold=float((metrics.get("rejection") or {}).get("threshold") or 0.0),
    )
    _promote_first(version)
    return version


def _promote_first(version: ModelVersion) -> None:
    # In a savepoint: if another version of the dataset got there first, the unique
    # constraint refuses this one, it stays unpromoted, and the caller's transaction goes on.
    with contextlib.suppress(IntegrityError), transaction.atomic():
        if _promoted_in(version.dataset_id).exists():
            return
        ModelVersion.objects.filter(pk=version.pk).update(is_promoted=True, promoted_at=timezone.now())
        Promotion.objects.create(model_version_id=version.pk)


def _promoted_in(dataset_id: int) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(dataset_id=dataset_id, is_promoted=True)


def promotion_gate_reason(*, version: ModelVersion) -> str | None:
    """Why the gate refuses `version`, or None: its macro-F1 is below that of its
    dataset's promoted version."""
    current = _promoted_in(version.dataset_id).exclude(pk=version.pk).first()
    if current is None:
        return None
    new, old = version.macro_f1, current.macro_f1
    if new is None or old is None or new >= old:
        return None
    return (
        f"v{version.pk} has macro-F1 {new:.3f}, below the promoted v{current.pk} ({old:.3f}); "
        "promote with force to override."
    )


def model_version_promote(
    *, version: ModelVersion, user: User | None = None, force: bool = False, rollback: bool = False
) -> ModelVersion:
    """Make `version` the one its dataset serves; other datasets' are untouched. The
    partial unique constraint keeps at most one promoted row per dataset; two
    promotions racing each other are retried, so the last to commit wins and neither
    fails. With PROMOTION_GATE on, a version whose macro-F1 is below the promoted
    one's is refused unless forced."""
    gated = settings.PROMOTION_GATE and not force and not rollback
    if gated and (reason := promotion_gate_reason(version=version)):
        raise PromotionRefused(reason)
    for attempt in range(10):
        try:
            _set_promoted(version, user=user, forced=force, rollback=rollback)
            break
        except (IntegrityError, OperationalError):  # a concurrent promotion committed in between
            if attempt == 9:
                raise
            time.sleep(0.01 * (attempt + 1))
    logger.info("%s model version %s", "rolled back to" if rollback else "promoted", version.pk)
    version.refresh_from_db()
    return version


def _set_promoted(version: ModelVersion, *, user: User | None, forced: bool, rollback: bool) -> None:
    with transaction.atomic():
        promoted = _promoted_in(version.dataset_id)
        previous = promoted.values_list("pk", flat=True).first()
        if previous == version.pk:
            return
        promoted.update(is_promoted=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_promoted=True, promoted_at=timezone.now())
        Promotion.objects.create(
            model_version_id=version.pk, previous_id=previous, user=user, forced=forced, rollback=rollback
        )


def serving_default_set(*, dataset: Dataset | None, user: User | None = None) -> None:
    """Answer predictions that name no dataset with `dataset`'s live model; None goes
    back to the most recently promoted version."""
    if dataset is None:
        ServingDefault.objects.filter(pk=1).delete()
        return
    if not _promoted_in(dataset.pk).exists():
        raise Refused(f"Dataset {dataset.name!r} has no live model: promote one of its versions first.")
    ServingDefault.objects.update_or_create(pk=1, defaults={"dataset": dataset, "user": user})
    logger.info("predictions without a dataset now go to %s", dataset.name)


def model_version_rollback(*, version: ModelVersion, user: User | None = None) -> ModelVersion:
    """Serve again what served before `version` was last promoted forward. Rollbacks
    are not followed, so rolling back twice goes two steps back, not forth."""
    from trainer.registry.selectors import model_version_previous

    previous = model_version_previous(current=version)
    if previous is None:
        raise PromotionRefused(f"Nothing served before v{version.pk}: there is no version to roll back to.")
    return model_version_promote(version=previous, user=user, rollback=True)


def model_version_set_threshold(*, version: ModelVersion, threshold: float) -> ModelVersion:
    """Change the confidence below which the version answers "unknown" (0 turns it off)."""
    if not 0.0 <= threshold <= 1.0:
        raise Refused("The threshold is a probability, between 0 and 1.")
    ModelVersion.objects.filter(pk=version.pk).update(rejection_threshold=threshold)
    version.refresh_from_db()
    return version
