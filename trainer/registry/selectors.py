"""Reads of the model registry: versions (on behalf of a user), the live one of each
dataset and the site's default, promotion history, and each version's exports."""

from collections.abc import Iterator
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from classifier_site.runs import RunStatus
from classifier_site.storage_audit import Reference
from datasets.selectors import is_id
from trainer.models import ExportFormat, ModelExport, ModelVersion, Promotion, ServingDefault


def model_version_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[ModelVersion]:
    if not is_admin(user):
        return ModelVersion.objects.none()
    return ModelVersion.objects.select_related("dataset", "job")


def model_version_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> ModelVersion:
    try:
        return model_version_list(user=user).get(pk=pk)
    except ModelVersion.DoesNotExist:
        raise Http404("No such model version.") from None


def model_versions_live() -> list[ModelVersion]:
    """Each dataset's promoted version, the default's first, then by dataset name:
    the dashboard's list, the prediction page's picker."""
    live = ModelVersion.objects.select_related("dataset").filter(is_promoted=True).order_by("dataset__name")
    default = served_table().default
    return sorted(live, key=lambda v: v.dataset_id != default)


def serving_default_choice() -> int | None:
    """The dataset an admin chose as the default, if any (it may have no live model)."""
    return ServingDefault.objects.filter(pk=1).values_list("dataset_id", flat=True).first()


def model_version_serving(*, dataset_id: int | None = None) -> ModelVersion | None:
    """The promoted version of `dataset_id`, or of the site's default dataset."""
    if dataset_id is None:
        dataset_id = served_table().default
    if dataset_id is None:
        return None
    return ModelVersion.objects.select_related("dataset", "job").filter(dataset_id=dataset_id, is_promoted=True).first()


@dataclass(frozen=True)
class ServedKey:
    version_id: int
    sha256: str
    threshold: float


@dataclass(frozen=True)
class ServedTable:
    """What every dataset serves, as the predictor checks it once per interval."""

    by_dataset: dict[int, ServedKey]
    names: dict[str, int]  # dataset name -> id, of datasets with a live model
    default: int | None  # dataset id

    def dataset_id(self, dataset: int | str | None) -> int | None:
        """The id of `dataset` (a name or an id, as commands name one; None: the
        default) if it has a live model."""
        if dataset is None:
            return self.default
        if isinstance(dataset, int):
            return dataset if dataset in self.by_dataset else None
        if dataset in self.names:
            return self.names[dataset]
        return int(dataset) if is_id(dataset) and int(dataset) in self.by_dataset else None


def served_table() -> ServedTable:
    """Two indexed queries: the promoted rows, and the admins' default. The default
    is the admins' choice while it has a live model, else the dataset of the most
    recently promoted version."""
    rows = list(
        ModelVersion.objects.filter(is_promoted=True).values_list(
            "dataset_id", "dataset__name", "pk", "sha256", "rejection_threshold", "promoted_at"
        )
    )
    by_dataset = {row[0]: ServedKey(row[2], row[3], row[4]) for row in rows}
    chosen = serving_default_choice()
    stamped = [row for row in rows if row[5] is not None]
    latest = max(stamped, key=lambda row: (row[5], row[2]))[0] if stamped else None
    return ServedTable(
        by_dataset=by_dataset,
        names={row[1]: row[0] for row in rows},
        default=chosen if chosen in by_dataset else latest,
    )


def model_version_previous(*, current: ModelVersion) -> ModelVersion | None:
    """What served before `current` was last promoted forward: where a rollback goes.
    (Promotions recorded before serving was per dataset may name another dataset's
    version as the previous one: that is no rollback within this dataset.)"""
    last = Promotion.objects.filter(model_version=current, rollback=False).select_related("previous").first()
    if last is None or last.previous is None or last.previous.dataset_id != current.dataset_id:
        return None
    return last.previous


def promotion_history(*, user: AbstractBaseUser | AnonymousUser, limit: int = 20) -> list[Promotion]:
    if not is_admin(user):
        return []
    return list(Promotion.objects.select_related("model_version__dataset", "previous", "user")[:limit])


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


def registry_stored_files() -> Iterator[Reference]:
    """Files of the registry for verify_storage: each version's model file with its SHA-256
    and its ONNX conversion and check record (names in plain columns), each export's file."""
    rows = ModelVersion.objects.values_list("pk", "file", "sha256", "onnx_file", "onnx_check_file")
    for pk, name, sha, onnx, check in rows.iterator(chunk_size=2000):
        yield Reference(name, f"model version {pk}", sha)
        for extra, what in ((onnx, "onnx"), (check, "onnx check")):
            if extra:
                yield Reference(extra, f"model version {pk} ({what})")
    for pk, fmt, name, sha in ModelExport.objects.exclude(file="").values_list("pk", "format", "file", "sha256"):
        yield Reference(name, f"model export {pk} ({fmt})", sha)
