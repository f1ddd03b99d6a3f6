"""Reads of datasets, always on behalf of a user."""

import hashlib
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Q, QuerySet
from django.http import Http404

from classifier_site.permissions import is_admin
from datasets.models import Dataset, Image, Label, Split


def dataset_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Dataset]:
    """Datasets the user may see: admins see all, others none."""
    if not is_admin(user):
        return Dataset.objects.none()
    return Dataset.objects.annotate(
        image_count=Count("images", distinct=True), label_count=Count("labels", distinct=True)
    ).order_by("name")


def dataset_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> Dataset:
    try:
        return dataset_list(user=user).get(pk=pk)
    except Dataset.DoesNotExist:
        raise Http404("No such dataset.") from None


@dataclass(frozen=True)
class ClassCount:
    name: str
    train: int
    val: int
    test: int

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


def dataset_class_counts(*, dataset: Dataset) -> list[ClassCount]:
    """Image counts per class and split, in one query."""
    rows = (
        Label.objects.filter(dataset=dataset)
        .annotate(**{s.value: Count("images", filter=Q(images__split=s.value)) for s in Split})
        .values_list("name", Split.TRAIN.value, Split.VALIDATION.value, Split.TEST.value)
    )
    return [ClassCount(name=name, train=train, val=val, test=test) for name, train, val, test in rows]


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
