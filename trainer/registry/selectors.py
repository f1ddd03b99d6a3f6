"""Reads of the model registry, always on behalf of a user: versions, the one served,
promotion history, and each version's exports."""

from collections.abc import Iterator
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from classifier_site.runs import RunStatus
from trainer.models import ExportFormat, ModelExport, ModelVersion, Promotion


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


def model_export_list(*, user: AbstractBaseUser | AnonymousUser, version: ModelVersion) -> QuerySet[ModelExport]:
    if not is_admin(user):
        return ModelExport.objects.none()
    return ModelExport.objects.filter(model_version=version).select_related("model_version")


def model_export_ready(*, user: AbstractBaseUser | AnonymousUser, version: ModelVersion, format: str) -> ModelExport:
    """A finished export, to download; 404 until it is ready."""
    export = model_export_list(user=user, version=version).filter(format=format, status=RunStatus.SUCCEEDED).first()
    if export is None:
        raise Http404(f"No finished {format} export of model version {version.pk}.")
    return export


@dataclass(frozen=True)
class ExportRow:
    format: ExportFormat
    export: ModelExport | None  # None: never asked for

    @property
    def is_busy(self) -> bool:
        busy = (RunStatus.QUEUED, RunStatus.RUNNING)
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
