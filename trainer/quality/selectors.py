"""Reads of data quality, on behalf of a user: the runs, a run's near-duplicate groups as
the dataset is now (after keep-one and moves), how much the leaks inflate the test score,
and "more like this" (from an image of the dataset, or from an uploaded one)."""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from classifier_site.runs import RunStatus
from classifier_site.storage_audit import Reference
from datasets.imaging import load_array
from datasets.models import Dataset, Image, Split
from trainer.models import Evaluation, QualityRun
from trainer.quality.vectors import VectorsUnavailable, extractor_get, vectors_load

SIMILAR_MAX = 100  # neighbours one query may ask for


def quality_stored_files() -> Iterator[Reference]:
    """Each analysis's stored vectors and index, with its SHA-256, for verify_storage."""
    rows = QualityRun.objects.exclude(index_file="", extractor_file="")
    fields = ("pk", "index_file", "index_sha256", "extractor_file", "extractor_sha256")
    for pk, index, index_sha, extractor, extractor_sha in rows.values_list(*fields).iterator(chunk_size=2000):
        if index:
            yield Reference(index, f"quality run {pk} (vectors)", index_sha)
        if extractor:
            yield Reference(extractor, f"quality run {pk} (extractor)", extractor_sha)


def quality_runs() -> QuerySet[QualityRun]:
    return QualityRun.objects.select_related("dataset")


def quality_run_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[QualityRun]:
    return quality_runs() if is_admin(user) else QualityRun.objects.none()


def quality_run_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> QualityRun:
    try:
        return quality_run_list(user=user).get(pk=pk)
    except QualityRun.DoesNotExist:
        raise Http404("No such data-quality run.") from None


def quality_latest(*, dataset: Dataset) -> QualityRun | None:
    """The dataset's newest run, whatever its status."""
    return quality_runs().filter(dataset=dataset).first()


def quality_latest_done(*, dataset: Dataset) -> QualityRun | None:
    """The dataset's newest finished analysis: the one its findings come from."""
    return quality_runs().filter(dataset=dataset, status=RunStatus.SUCCEEDED).first()


@dataclass
class DuplicateGroup:
    number: int  # its place in the run's report: what the keep-one and move actions name
    images: list[Image]
    splits: Counter[str] = field(default_factory=Counter)
    classes: set[str] = field(default_factory=set)

    @property
    def class_names(self) -> list[str]:
        return sorted(self.classes)

    @property
    def split_counts(self) -> list[tuple[str, int]]:
        return sorted(self.splits.items())

    @property
    def leak(self) -> bool:
        """Copies on both sides of the test split: the test score counts photos trained on."""
        return Split.TEST in self.splits and len(self.splits) > 1

    @property
    def conflict(self) -> bool:
        """One photo under two classes: at least one of the labels is wrong."""
        return len(self.classes) > 1


def duplicate_groups(run: QualityRun) -> list[DuplicateGroup]:
    """The run's groups as the dataset is now, dangerous ones first; a group left with one
    image (the others deleted) is no longer a group."""
    numbered: list[list[int]] = run.report.get("groups", [])
    images = Image.objects.filter(dataset=run.dataset_id, pk__in=[pk for g in numbered for pk in g])
    by_id = {image.pk: image for image in images.select_related("label")}
    groups = []
    for number, members in enumerate(numbered):
        present = [by_id[pk] for pk in members if pk in by_id]
        if len(present) > 1:
            group = DuplicateGroup(number, present, Counter(i.split for i in present))
            group.classes = {i.label.name for i in present if i.label is not None}
            groups.append(group)
    return sorted(groups, key=lambda g: (not g.leak, not g.conflict, g.number))


@dataclass(frozen=True)
class LeakEffect:
    evaluation: Evaluation
    accuracy: float  # on every evaluated image
    accuracy_without: float  # without the test images that have a copy outside the test split
    removed: int


def leak_effect(run: QualityRun, groups: list[DuplicateGroup]) -> LeakEffect | None:
    """The latest test-split evaluation re-scored without the leaked test images."""
    leaked = {i.pk for g in groups if g.leak for i in g.images if i.split == Split.TEST}
    evaluation = Evaluation.objects.filter(dataset=run.dataset_id, split=Split.TEST).first()
    if evaluation is None or not leaked:
        return None
    rows = list(evaluation.predictions.values_list("image_id", "true_index", "predicted_index"))
    kept = [(t, p) for image, t, p in rows if image not in leaked]
    if not rows or not kept:
        return None
    return LeakEffect(
        evaluation=evaluation,
        accuracy=float(np.mean([t == p for _, t, p in rows])),
        accuracy_without=float(np.mean([t == p for t, p in kept])),
        removed=len(rows) - len(kept),
    )


@dataclass(frozen=True)
class Neighbour:
    image: Image
    similarity: float


def similar_images(run: QualityRun, *, image_id: int, k: int = 12) -> list[Neighbour]:
    """The `k` images most like `image_id` (itself left out), nearest first, from the
    run's stored index; images deleted since are skipped."""
    index = vectors_load(name=run.index_file, sha256=run.index_sha256)
    nearest = index.neighbours(image_id, max(1, min(k, SIMILAR_MAX)))
    if nearest is None:
        raise VectorsUnavailable(f"Image {image_id} was not analysed (added later, or unreadable): analyse again.")
    return _neighbours(run, *nearest, k=k)


def similar_to_upload(run: QualityRun, *, data: bytes, k: int = 12) -> list[Neighbour]:
    """The `k` images most like an uploaded image's bytes, nearest first: its vector from
    the run's stored extractor, searched in the run's index. ImageRejected for a file that
    is not an acceptable image (as any upload is checked)."""
    pixels = load_array(data, run.image_size, max_pixels=settings.MAX_IMAGE_PIXELS)  # bad input costs no load
    index = vectors_load(name=run.index_file, sha256=run.index_sha256)
    extract = extractor_get(name=run.extractor_file, sha256=run.extractor_sha256)
    ids, similarities = index.search(extract(pixels[None]), max(1, min(k, SIMILAR_MAX)))
    keep = ids[0] >= 0
    return _neighbours(run, ids[0][keep], similarities[0][keep], k=k)


def _neighbours(run: QualityRun, ids: np.ndarray, similarities: np.ndarray, *, k: int) -> list[Neighbour]:
    """Those of the found images still in the dataset (some may be deleted since), in order."""
    found = [(int(i), float(s)) for i, s in zip(ids, similarities, strict=True)]
    images = Image.objects.filter(dataset=run.dataset_id, pk__in=[i for i, _ in found]).select_related("label")
    by_id = {image.pk: image for image in images}
    return [Neighbour(by_id[i], s) for i, s in found if i in by_id][:k]
