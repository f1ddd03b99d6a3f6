"""Reads of jobs and model versions, always on behalf of a user."""

from collections.abc import Iterator
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber
from django.http import Http404

from classifier_site.permissions import is_admin
from trainer.models import (
    Evaluation,
    ExportFormat,
    ExportStatus,
    ModelExport,
    ModelVersion,
    Prediction,
    Promotion,
    TrainingJob,
)


def job_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[TrainingJob]:
    if not is_admin(user):
        return TrainingJob.objects.none()
    return TrainingJob.objects.select_related("dataset", "created_by", "model_version").defer("snapshot")


def job_list_filtered(
    *, user: AbstractBaseUser | AnonymousUser, dataset: str = "", status: str = "", arch: str = ""
) -> QuerySet[TrainingJob]:
    """Jobs narrowed by the list page's filters; values that cannot match give no rows."""
    jobs = job_list(user=user)
    if dataset:
        jobs = jobs.filter(dataset_id=dataset) if dataset.isdigit() else jobs.none()
    if status:
        jobs = jobs.filter(status=status)
    if arch:
        jobs = jobs.filter(config__arch=arch)
    return jobs


def job_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> TrainingJob:
    try:
        return job_list(user=user).get(pk=pk)
    except TrainingJob.DoesNotExist:
        raise Http404("No such job.") from None


def model_version_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[ModelVersion]:
    if not is_admin(user):
        return ModelVersion.objects.none()
    return ModelVersion.objects.select_related("dataset", "job")


def model_version_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> ModelVersion:
    try:
        return model_version_list(user=user).get(pk=pk)
    except ModelVersion.DoesNotExist:
        raise Http404("No such model version.") from None


def model_version_serving() -> ModelVersion | None:
    """The promoted version: the one every prediction answers with."""
    return ModelVersion.objects.select_related("dataset").filter(is_promoted=True).first()


def model_version_promoted_key() -> tuple[int, str, float] | None:
    """(id, sha256, rejection threshold) of the promoted version: the predictor's
    cheap once-a-second check."""
    return ModelVersion.objects.filter(is_promoted=True).values_list("pk", "sha256", "rejection_threshold").first()


def model_version_previous(*, current: ModelVersion) -> ModelVersion | None:
    """What served before `current` was last promoted forward: where a rollback goes."""
    last = Promotion.objects.filter(model_version=current, rollback=False).select_related("previous").first()
    return last.previous if last else None


def promotion_history(*, user: AbstractBaseUser | AnonymousUser, limit: int = 20) -> list[Promotion]:
    if not is_admin(user):
        return []
    return list(Promotion.objects.select_related("model_version", "previous", "user")[:limit])


def evaluation_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Evaluation]:
    if not is_admin(user):
        return Evaluation.objects.none()
    return Evaluation.objects.select_related("model_version", "model_version__job", "dataset")


def evaluation_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> Evaluation:
    try:
        return evaluation_list(user=user).get(pk=pk)
    except Evaluation.DoesNotExist:
        raise Http404("No such evaluation.") from None


def evaluation_of_job(*, user: AbstractBaseUser | AnonymousUser, job: TrainingJob) -> Evaluation | None:
    """The newest report of the job's model, if it has one."""
    return evaluation_list(user=user).filter(model_version__job=job).first()


def prediction_cell(*, evaluation: Evaluation, true_index: int, predicted_index: int) -> QuerySet[Prediction]:
    """The images behind one confusion-matrix cell, the most confident first."""
    return (
        evaluation.predictions.filter(true_index=true_index, predicted_index=predicted_index)
        .select_related("image", "image__label")
        .order_by("-confidence", "id")
    )


def prediction_mistakes(*, evaluation: Evaluation, limit: int = 24) -> list[Prediction]:
    """The most confident wrong answers: where the model, or the label, is most surely wrong."""
    wrong = evaluation.predictions.exclude(true_index=F("predicted_index"))
    return list(wrong.select_related("image", "image__label").order_by("-confidence", "id")[:limit])


def prediction_examples(*, evaluation: Evaluation, per_class: int = 4) -> dict[int, list[Prediction]]:
    """A few correct answers per class (the most confident), by class index."""
    rank = Window(RowNumber(), partition_by=[F("true_index")], order_by=[F("confidence").desc(), F("id").asc()])
    right = evaluation.predictions.filter(true_index=F("predicted_index")).select_related("image")
    examples: dict[int, list[Prediction]] = {index: [] for index in range(len(evaluation.classes))}
    for prediction in right.annotate(rank=rank).filter(rank__lte=per_class).order_by("true_index", "rank"):
        examples[prediction.true_index].append(prediction)
    return examples


def prediction_get(*, evaluation: Evaluation, pk: int) -> Prediction:
    try:
        return evaluation.predictions.select_related("image").get(pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No such prediction.") from None


# --- model exports ------------------------------------------------------------------


def model_export_list(*, user: AbstractBaseUser | AnonymousUser, version: ModelVersion) -> QuerySet[ModelExport]:
    if not is_admin(user):
        return ModelExport.objects.none()
    return ModelExport.objects.filter(model_version=version).select_related("model_version")


def model_export_ready(*, user: AbstractBaseUser | AnonymousUser, version: ModelVersion, format: str) -> ModelExport:
    """A finished export, to download; 404 until it is ready."""
    export = model_export_list(user=user, version=version).filter(format=format, status=ExportStatus.SUCCEEDED).first()
    if export is None:
        raise Http404(f"No finished {format} export of model version {version.pk}.")
    return export


@dataclass(frozen=True)
class ExportRow:
    format: ExportFormat
    export: ModelExport | None  # None: never asked for

    @property
    def is_busy(self) -> bool:
        busy = (ExportStatus.QUEUED, ExportStatus.RUNNING)
        return self.export is not None and self.export.status in busy and not self.export.is_stale


@dataclass(frozen=True)
class ExportTable:
    """Every format of one version, asked for or not: the model page's export table."""

    version: ModelVersion
    rows: list[ExportRow]

    def __iter__(self) -> Iterator[ExportRow]:
        return iter(self.rows)

    @property
    def is_busy(self) -> bool:
        """A conversion is queued or running: the page polls until it ends."""
        return any(row.is_busy for row in self.rows)


def model_export_table(*, user: AbstractBaseUser | AnonymousUser, version: ModelVersion) -> ExportTable:
    by_format = {export.format: export for export in model_export_list(user=user, version=version)}
    return ExportTable(version, [ExportRow(fmt, by_format.get(fmt)) for fmt in ExportFormat])
