"""Reads of datasets, always on behalf of a user."""

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.files.storage import default_storage
from django.db.models import Case, Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.functions import Coalesce
from django.http import Http404

from classifier_site.permissions import is_admin
from classifier_site.runs import ACTIVE, RunStatus
from classifier_site.storage_audit import Reference
from datasets.imaging import ImageRejected, load_array
from datasets.models import Dataset, DatasetExport, DatasetImport, Image, Label, Split

logger = logging.getLogger(__name__)


def is_id(text: str) -> bool:
    """Digits a database id can hold (not "²", which isdigit() accepts, nor 20 digits)."""
    return text.isascii() and text.isdigit() and len(text) < 19


def dataset_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Dataset]:
    """Datasets the user may see: admins see all, others none."""
    if not is_admin(user):
        return Dataset.objects.none()
    # One subquery per count: joining images and labels together would count their product.
    return Dataset.objects.annotate(image_count=_count(Image), label_count=_count(Label)).order_by("name")


def _count(model: type[Image] | type[Label]) -> Coalesce:
    rows = model.objects.filter(dataset=OuterRef("pk")).order_by().values("dataset")
    return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n"), output_field=IntegerField()), 0)


def dataset_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> Dataset:
    """One dataset, without the list's counts (its pages count per class instead)."""
    if not is_admin(user):
        raise Http404("No such dataset.")
    try:
        return Dataset.objects.get(pk=pk)
    except Dataset.DoesNotExist:
        raise Http404("No such dataset.") from None


@dataclass(frozen=True)
class ClassCount:
    id: int
    name: str
    train: int
    val: int
    test: int

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


def dataset_class_counts(*, dataset: Dataset) -> list[ClassCount]:
    """Image counts per class and split, by name: one GROUP BY over the images that the
    (dataset, label, split) index answers alone, and the class names."""
    rows = (
        Image.objects.filter(dataset=dataset, label__isnull=False)
        .order_by()
        .values_list("label_id", "split")
        .annotate(n=Count("pk"))
    )
    counts = {(label_id, split): n for label_id, split, n in rows}
    labels = Label.objects.filter(dataset=dataset).order_by("name").values_list("id", "name")
    return [ClassCount(pk, name, *(counts.get((pk, s.value), 0) for s in Split)) for pk, name in labels]


def dataset_unlabelled_count(*, dataset: Dataset) -> int:
    return Image.objects.filter(dataset=dataset, label__isnull=True).count()


@dataclass(frozen=True)
class Snapshot:
    """What a training job trains on, frozen when the job is created."""

    classes: list[str]
    images: list[tuple[int, int, str]]  # (image id, class index, split)
    hash: str

    def as_dict(self) -> dict[str, object]:
        return {"classes": self.classes, "images": [list(i) for i in self.images], "hash": self.hash}

    def count(self, split: str) -> int:
        return sum(1 for _, _, s in self.images if s == split)


def dataset_find(reference: str) -> Dataset | None:
    """A dataset by name or, failing that, by id (how commands name one)."""
    dataset = Dataset.objects.filter(name=reference).first()
    if dataset is None and is_id(reference):
        dataset = Dataset.objects.filter(pk=int(reference)).first()
    return dataset


def dataset_snapshot(*, dataset: Dataset) -> Snapshot:
    """Labelled images with their class and split, and a hash of exactly that content."""
    rows = list(
        Image.objects.filter(dataset=dataset, label__isnull=False)
        .order_by("id")
        .values_list("id", "sha256", "label__name", "split")
    )
    classes = sorted({name for _, _, name, _ in rows})
    index = {name: i for i, name in enumerate(classes)}
    digest = hashlib.sha256()
    for _, sha, name, split in sorted(rows, key=lambda r: r[1]):
        digest.update(f"{sha}\t{name}\t{split}\n".encode())
    images = [(pk, index[name], split) for pk, _, name, split in rows]
    return Snapshot(classes=classes, images=images, hash=digest.hexdigest())


def image_list(
    *, dataset: Dataset, label: str = "", split: str = "", unlabelled: bool = False, needs_review: bool = False
) -> QuerySet[Image]:
    """The dataset page's grid, newest first: filtered by class id, split, unlabelled
    only or queued for review (the workbench's selector with the page's four filters)."""
    images = workbench_images(
        dataset=dataset, show="unlabelled" if unlabelled else "all", label="" if unlabelled else label, split=split,
        order="newest",
    )  # fmt: skip
    return images.filter(needs_review=True) if needs_review else images


def dataset_imports(*, dataset: Dataset) -> QuerySet[DatasetImport]:
    return DatasetImport.objects.filter(dataset=dataset).select_related("created_by")


def import_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> DatasetImport:
    if not is_admin(user):
        raise Http404("No such import.")
    try:
        return DatasetImport.objects.select_related("dataset").get(pk=pk)
    except DatasetImport.DoesNotExist:
        raise Http404("No such import.") from None


@dataclass(frozen=True)
class ExportState:
    """A dataset's latest export (any status) and the one to download (the latest finished)."""

    latest: DatasetExport | None
    ready: DatasetExport | None

    @property
    def busy(self) -> bool:
        """Queued or running with a live worker: the page polls until it ends."""
        latest = self.latest
        return latest is not None and latest.status in ACTIVE and not latest.is_stale


def dataset_export_state(*, user: AbstractBaseUser | AnonymousUser, dataset: Dataset) -> ExportState:
    if not is_admin(user):
        return ExportState(None, None)
    exports = DatasetExport.objects.filter(dataset=dataset)
    return ExportState(exports.first(), exports.filter(status=RunStatus.SUCCEEDED).first())


def dataset_export_ready(*, user: AbstractBaseUser | AnonymousUser, dataset: Dataset) -> DatasetExport:
    """The latest finished export, to download; 404 until there is one."""
    ready = dataset_export_state(user=user, dataset=dataset).ready
    if ready is None:
        raise Http404(f"No finished export of {dataset.name}: ask for one first.")
    return ready


def dataset_stored_files() -> Iterator[Reference]:
    """Files of datasets whose rows keep their SHA-256 (verify_storage checks them):
    every image's file, every finished export's zip."""
    for pk, name, sha in Image.objects.values_list("pk", "file", "sha256").iterator(chunk_size=2000):
        yield Reference(name, f"image {pk}", sha)
    for pk, name, sha in DatasetExport.objects.exclude(file="").values_list("pk", "file", "sha256"):
        yield Reference(name, f"dataset export {pk}", sha)


MIN_IMAGES_PER_CLASS = 20
IMBALANCE_RATIO = 10


def dataset_warnings(*, counts: list[ClassCount], unlabelled: int, flagged: dict[str, int] | None = None) -> list[str]:
    """What a person should fix before training, in plain words; `flagged` the counts of
    dataset_flagged (what the last data-quality analysis marked on the images)."""
    warnings = [
        f"Class {c.name!r} has only {c.total} images; aim for at least {MIN_IMAGES_PER_CLASS}."
        for c in counts
        if c.total < MIN_IMAGES_PER_CLASS
    ]
    warnings += [f"Class {c.name!r} has no test images: its accuracy cannot be measured." for c in counts if not c.test]
    sizes = [c.total for c in counts if c.total]
    if len(sizes) > 1 and max(sizes) >= IMBALANCE_RATIO * min(sizes):
        warnings.append(
            f"Strong imbalance: the largest class has {max(sizes)} images, the smallest {min(sizes)} "
            "(consider more images of the small classes)."
        )
    if len(counts) < 2:
        warnings.append("Training needs at least two classes.")
    if unlabelled:
        warnings.append(f"{unlabelled} images are unlabelled; training ignores them.")
    flagged = flagged or {}
    if flagged.get("outliers"):
        warnings.append(f"{flagged['outliers']} images are like no other in the dataset (outliers): check that they "
                        "belong here, and delete the ones that do not (workbench: show outliers).")  # fmt: skip
    if flagged.get("label_issues"):
        warnings.append(f"{flagged['label_issues']} labels look wrong by confident learning: review them "
                        "(workbench: show label issues; they are in the review queue).")  # fmt: skip
    return warnings


def dataset_flagged(*, dataset: Dataset) -> dict[str, int]:
    """How many images the last data-quality analysis flagged, by finding."""
    return Image.objects.filter(dataset=dataset).aggregate(
        outliers=Count("pk", filter=Q(outlier_score__isnull=False)),
        label_issues=Count("pk", filter=Q(label_issue_quality__isnull=False)),
    )


def label_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> Label:
    if not is_admin(user):
        raise Http404("No such class.")
    try:
        return Label.objects.select_related("dataset").get(pk=pk)
    except Label.DoesNotExist:
        raise Http404("No such class.") from None


def image_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> Image:
    if not is_admin(user):
        raise Http404("No such image.")
    try:
        return Image.objects.get(pk=pk)
    except Image.DoesNotExist:
        raise Http404("No such image.") from None


# --- the labelling workbench ------------------------------------------------------------------

# Below this top-1 probability the model is unsure: the "low confidence" filter.
LOW_CONFIDENCE = 0.5
WORKBENCH_IDS_MAX = 200  # images one `images=` filter may name
# At or above it, a suggestion that contradicts an unchecked label puts the image in the
# review queue (a likely label error).
REVIEW_CONFIDENCE = 0.9

WORKBENCH_SHOWS = [
    ("all", "all images"),
    ("unlabelled", "unlabelled"),
    ("labelled", "labelled"),
    ("low", f"low confidence (< {LOW_CONFIDENCE:.0%})"),
    ("disagree", "model disagrees with the label"),
    ("review", "review queue (likely label errors)"),
    ("label_issue", "label issues (confident learning)"),
    ("outlier", "outliers (like no other image)"),
]
# Active learning orders put what the model is least sure about first; unscored images last.
WORKBENCH_ORDERS = [
    ("oldest", "oldest first"),
    ("newest", "newest first"),
    ("least_confidence", "least confident first"),
    ("margin", "smallest margin first"),
    ("entropy", "highest entropy first"),
    ("label_quality", "worst label quality first"),
    ("outlier", "most unusual first"),
]
_ORDERING: dict[str, list[Any]] = {
    "oldest": ["id"],
    "newest": ["-id"],
    "least_confidence": [F("suggestion_confidence").asc(nulls_last=True), "id"],
    "margin": [F("suggestion_margin").asc(nulls_last=True), "id"],
    "entropy": [F("suggestion_entropy").desc(nulls_last=True), "id"],
    "label_quality": [F("label_issue_quality").asc(nulls_last=True), "id"],
    "outlier": [F("outlier_score").asc(nulls_last=True), "id"],
}


def _disagrees() -> Q:
    return Q(label__isnull=False) & ~Q(suggestion="") & ~Q(label__name=F("suggestion"))


def workbench_images(
    *, dataset: Dataset, show: str = "all", label: str = "", split: str = "", order: str = "oldest", images: str = ""
) -> QuerySet[Image]:
    """A dataset's images for the workbench (and the image API): `show` one of
    WORKBENCH_SHOWS, `label` a class id, `split` a Split, `order` one of WORKBENCH_ORDERS,
    `images` comma-separated ids (these only, in that order unless `order` says otherwise:
    "more like this" lists the nearest first). Unknown values mean no filter and the
    default order, never an error."""
    rows = Image.objects.filter(dataset=dataset).select_related("label")
    if chosen := [int(i) for i in images.split(",")[:WORKBENCH_IDS_MAX] if is_id(i)]:
        rows = rows.filter(pk__in=chosen)
        if order not in _ORDERING:
            return _filtered(rows, show, label, split).order_by(
                Case(*(When(pk=pk, then=place) for place, pk in enumerate(chosen)), output_field=IntegerField())
            )
    return _filtered(rows, show, label, split).order_by(*workbench_ordering(order))


def _filtered(images: QuerySet[Image], show: str, label: str, split: str) -> QuerySet[Image]:
    filters = {
        "unlabelled": Q(label__isnull=True),
        "labelled": Q(label__isnull=False),
        "low": Q(suggestion_confidence__lt=LOW_CONFIDENCE),
        "disagree": _disagrees(),
        "review": Q(needs_review=True)
        | (_disagrees() & Q(label_checked=False, suggestion_confidence__gte=REVIEW_CONFIDENCE))
        | Q(label_issue_quality__isnull=False, label_checked=False),
        "label_issue": Q(label_issue_quality__isnull=False),
        "outlier": Q(outlier_score__isnull=False),
    }
    if show in filters:
        images = images.filter(filters[show])
    if is_id(label):
        images = images.filter(label_id=int(label))
    if split in Split.values:
        images = images.filter(split=split)
    return images


def workbench_ordering(order: str) -> list[Any]:
    return _ORDERING.get(order, _ORDERING["oldest"])


def image_pixels(image: Image, size: int) -> np.ndarray | None:
    """What a model sees of one stored image (uint8, size x size x 3), or None when its
    file is missing or unreadable (logged: the caller counts it as skipped)."""
    try:
        with default_storage.open(str(image.file.name)) as fh:
            return load_array(fh.read(), size, max_pixels=settings.MAX_IMAGE_PIXELS)
    except (OSError, ImageRejected) as exc:
        logger.warning("skipping image %s (%s): %s", image.pk, image.file.name, exc)
        return None
