"""Label changes: the one way an image's class changes once imported.

The workbench, the REST API, the review queue, accepted suggestions, evaluation
reports and prediction corrections all call `images_label_set`, so they share its
rules: optimistic locking (a change based on an old `label_version` is refused,
never silently applied over a colleague's), a `LabelChange` row per image, and
all-or-nothing batches that `label_change_undo` can revert.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import F, QuerySet

from classifier_site import errors
from datasets.imaging import decode_image
from datasets.models import ChangeSource, Dataset, Image, Label, LabelChange
from datasets.services import clean_label_name, image_add_or_get, label_get_or_create

# Rows per UPDATE ... WHERE id IN (...): well under SQLite's bound-variable limit.
_CHUNK = 500


@dataclass(frozen=True)
class LabelEdit:
    """Set `image_id`'s class to `label` (a class name; None unlabels). `version` is the
    label_version the client saw; None skips the check (server-side decisions)."""

    image_id: int
    label: str | None
    version: int | None = None


@dataclass(frozen=True)
class ImageLabel:
    id: int
    label: str | None
    version: int


@dataclass(frozen=True)
class Conflict:
    """An image someone else changed after the client read it (or deleted): what it is now."""

    image_id: int
    label: str | None
    version: int
    changed_by: str | None
    changed_at: datetime | None
    deleted: bool = False

    def message(self) -> str:
        if self.deleted:
            return f"image {self.image_id} was deleted"
        who = f" by {self.changed_by}" if self.changed_by else ""
        when = f" at {self.changed_at:%H:%M:%S}" if self.changed_at else ""
        return f"image {self.image_id} was changed to {self.label or 'unlabelled'}{who}{when}"


class LabelConflict(errors.Conflict):
    """A 409 that also lists each stale image (the API answers them as `conflicts`)."""

    def __init__(
        self, conflicts: list[Conflict], what: str = "Not saved", rest: str = "Nothing in this change was applied."
    ) -> None:
        self.conflicts = conflicts
        shown = "; ".join(c.message() for c in conflicts[:3])
        more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
        super().__init__(f"{what}: {shown}{more}. {rest}")


@dataclass(frozen=True)
class LabelSetResult:
    batch: uuid.UUID | None
    images: list[ImageLabel]
    # Undo only: images of the batch someone else changed since, left as they are.
    kept: list[Conflict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class _Current:
    label_id: int | None
    label: str | None
    version: int
    needs_review: bool
    checked: bool


# How a change sets an image's review flags: a person decided (out of the review queue),
# keep them (a class merged or deleted), or restore them per image (undo).
Flags = Literal["decided", "keep"] | Mapping[int, tuple[bool, bool]]


def images_label_set(
    *, dataset: Dataset, edits: Sequence[LabelEdit], user: AbstractBaseUser | AnonymousUser | None, source: str,
    flags: Flags = "decided",
) -> LabelSetResult:  # fmt: skip
    """Apply `edits` to images of `dataset`, all or none: a stale version anywhere raises
    LabelConflict and nothing changes. Unknown class names become new classes; an
    image set to its current label counts as confirmed (it leaves the review queue)."""
    if not edits:
        return LabelSetResult(batch=None, images=[])
    edits = _last_edit_per_image(edits)
    author_id = int(user.pk) if user is not None and user.is_authenticated else None
    with transaction.atomic():
        current = _current_labels(dataset, [e.image_id for e in edits])
        _refuse_stale(edits, current)
        labels = _labels_by_name(dataset, {e.label for e in edits if e.label})
        _apply(edits, current, labels, flags)
        batch = uuid.uuid4()
        LabelChange.objects.bulk_create(_history(dataset, edits, current, batch, source, author_id))
    images = [ImageLabel(e.image_id, e.label, current[e.image_id].version + 1) for e in edits]
    return LabelSetResult(batch=batch, images=images)


def _history(
    dataset: Dataset, edits: Sequence[LabelEdit], current: dict[int, _Current], batch: uuid.UUID, source: str,
    author_id: int | None,
) -> Iterable[LabelChange]:  # fmt: skip
    for e in edits:
        now = current[e.image_id]
        yield LabelChange(
            dataset=dataset, image_id=e.image_id, batch=batch, old_label=now.label or "", new_label=e.label or "",
            old_class_id=now.label_id, old_needs_review=now.needs_review, old_label_checked=now.checked,
            version=now.version + 1, source=source, user_id=author_id,
        )  # fmt: skip


def _last_edit_per_image(edits: Sequence[LabelEdit]) -> list[LabelEdit]:
    """One edit per image (the last wins), with class names cleaned like everywhere else."""
    by_image = {e.image_id: e for e in edits}
    return [LabelEdit(e.image_id, _clean(e.label), e.version) for e in by_image.values()]


def _clean(name: str | None) -> str | None:
    """Whitespace collapsed. Only None unlabels: a blank name is a mistake, not a request."""
    return None if name is None else clean_label_name(name)


def _current_labels(dataset: Dataset, ids: list[int]) -> dict[int, _Current]:
    """The images as they are, locked until commit (PostgreSQL; SQLite's IMMEDIATE
    transactions lock the database): the versions read stay true for our write, and
    rows are locked in id order, so two batches never wait on each other in a circle."""
    current: dict[int, _Current] = {}
    for chunk in _chunks(sorted(ids)):
        rows = (
            Image.objects.select_for_update(of=("self",))
            .filter(dataset=dataset, pk__in=chunk)
            .order_by("pk")
            .values_list("pk", "label_id", "label__name", "label_version", "needs_review", "label_checked")
        )
        current.update(
            {
                pk: _Current(label_id, name, version, review, checked)
                for pk, label_id, name, version, review, checked in rows
            }
        )
    missing = sorted(set(ids) - current.keys())
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise ValueError(f"No image {shown} in dataset {dataset.name!r}.")
    return current


def _refuse_stale(edits: Sequence[LabelEdit], current: dict[int, _Current]) -> None:
    stale = [e.image_id for e in edits if e.version is not None and e.version != current[e.image_id].version]
    if stale:
        raise LabelConflict(_conflicts(stale))  # nothing written yet: this is others' work


def _labels_by_name(dataset: Dataset, names: set[str | None]) -> dict[str, Label]:
    return {name: label_get_or_create(dataset=dataset, name=name) for name in sorted(n for n in names if n)}


def _apply(edits: Sequence[LabelEdit], current: dict[int, _Current], labels: dict[str, Label], flags: Flags) -> None:
    """One UPDATE per group of images getting the same values. The rows are locked since
    `_current_labels` read them, so the versions checked there are still theirs."""
    groups: dict[tuple[str | None, bool, bool], list[int]] = defaultdict(list)
    for e in edits:
        now = current[e.image_id]
        if flags == "decided":
            review, checked = False, e.label is not None
        elif flags == "keep":
            review, checked = now.needs_review, now.checked
        else:
            review, checked = flags[e.image_id]
        groups[(e.label, review, checked)].append(e.image_id)
    for (name, review, checked), ids in groups.items():
        label = labels[name] if name else None
        for chunk in _chunks(ids):
            Image.objects.filter(pk__in=chunk).update(
                label=label, label_version=F("label_version") + 1, needs_review=review, label_checked=checked
            )


def _conflicts(ids: list[int]) -> list[Conflict]:
    """What the images are now, and who last changed them; deleted ones say so."""
    rows = Image.objects.filter(pk__in=ids).values_list("pk", "label__name", "label_version")
    last = _last_changes(ids)
    conflicts = []
    for pk, name, version in rows:
        change = last.get(pk)
        who = change.user.get_username() if change is not None and change.user is not None else None
        conflicts.append(Conflict(pk, name, version, who, change.created_at if change else None))
    found = {c.image_id for c in conflicts}
    conflicts += [Conflict(pk, None, 0, None, None, deleted=True) for pk in ids if pk not in found]
    return sorted(conflicts, key=lambda c: c.image_id)


def _last_changes(ids: Iterable[int]) -> dict[int, LabelChange]:
    changes = LabelChange.objects.filter(image_id__in=list(ids)).select_related("user").order_by("image_id", "-id")
    last: dict[int, LabelChange] = {}
    for change in changes:
        last.setdefault(change.image_id, change)
    return last


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def image_label_set(
    *, image: Image, label_name: str | None, user: AbstractBaseUser | AnonymousUser | None, source: str,
    version: int | None = None,
) -> Image:  # fmt: skip
    """One image: `images_label_set` for callers holding an Image (reports, corrections)."""
    images_label_set(dataset=image.dataset, edits=[LabelEdit(image.pk, label_name, version)], user=user, source=source)
    image.refresh_from_db()
    return image


# --- undo ---------------------------------------------------------------------------------


def label_change_undo(*, dataset: Dataset, user: AbstractBaseUser | AnonymousUser) -> LabelSetResult:
    """Revert `user`'s most recent batch in `dataset` still in effect (repeat to go further
    back): each image gets back its class and review flags. Images someone else changed
    since (or whose old class was deleted) keep their current label and are reported in
    `kept`; when that is all of them, LabelConflict. Either way the batch is then no longer
    in effect, so the next undo goes further back instead of sticking on it."""
    if not user.is_authenticated:
        raise ValueError("Sign in to undo your changes.")
    with transaction.atomic():
        changes = _last_batch(dataset, int(user.pk))
        kept_ids = _changed_since(changes) | {c.image_id for c in changes if c.old_label and c.old_class_id is None}
        todo = [c for c in changes if c.image_id not in kept_ids]
        names = dict(Label.objects.filter(pk__in=[c.old_class_id for c in todo]).values_list("pk", "name"))
        edits = [LabelEdit(c.image_id, names.get(c.old_class_id) if c.old_class_id else None) for c in todo]
        restore = {c.image_id: (c.old_needs_review, c.old_label_checked) for c in todo}
        LabelChange.objects.filter(pk__in=[c.pk for c in changes]).update(undone=True)
        result = images_label_set(dataset=dataset, edits=edits, user=user, source=ChangeSource.UNDO, flags=restore)
    kept = _conflicts(sorted(kept_ids))
    if not todo:
        raise LabelConflict(
            kept, "Not undone", "Nothing of that change was still in effect; undo again to go further back."
        )
    return LabelSetResult(batch=result.batch, images=result.images, kept=kept)


def _last_batch(dataset: Dataset, user_id: int) -> list[LabelChange]:
    """The user's newest batch still in effect, its rows locked (two undos never take the same)."""
    last = (
        LabelChange.objects.filter(dataset=dataset, user_id=user_id, undone=False)
        .exclude(source=ChangeSource.UNDO)
        .order_by("-id")
        .first()
    )
    if last is None:
        raise ValueError("Nothing to undo.")
    return list(LabelChange.objects.select_for_update().filter(batch=last.batch, undone=False).order_by("image_id"))


def _changed_since(changes: list[LabelChange]) -> set[int]:
    """Images with a later change still in effect (not undone, not itself an undo)."""
    after = {c.image_id: c.pk for c in changes}
    later = (
        LabelChange.objects.filter(image_id__in=list(after), pk__gt=min(after.values(), default=0), undone=False)
        .exclude(source=ChangeSource.UNDO)
        .values_list("image_id", "pk")
    )
    return {image_id for image_id, pk in later if pk > after[image_id]}


# --- classes merged or deleted --------------------------------------------------------------


def label_merge(*, source: Label, target: Label, user: AbstractBaseUser | AnonymousUser | None = None) -> Label:
    """Move every image of `source` into `target`, then remove `source`. Each image's
    version moves on and its history says so, so a client holding the old label gets 409."""
    if source.dataset_id != target.dataset_id or source.pk == target.pk:
        raise ValueError("Merge two different classes of the same dataset.")
    with transaction.atomic():
        _reclass(source, target.name, user)
        source.delete()
    return target


def label_delete(*, label: Label, user: AbstractBaseUser | AnonymousUser | None = None) -> int:
    """Remove a class; its images stay, unlabelled. Returns how many images that was."""
    with transaction.atomic():
        count = _reclass(label, None, user)
        label.delete()
    return count


def _reclass(label: Label, name: str | None, user: AbstractBaseUser | AnonymousUser | None) -> int:
    ids = list(Image.objects.filter(label=label).values_list("pk", flat=True))
    edits = [LabelEdit(pk, name) for pk in ids]
    images_label_set(dataset=label.dataset, edits=edits, user=user, source=ChangeSource.CLASS, flags="keep")
    return len(ids)


def suggestions_accept(
    *, dataset: Dataset, images: QuerySet[Image], min_confidence: float,
    user: AbstractBaseUser | AnonymousUser | None,
) -> LabelSetResult:  # fmt: skip
    """Give each of `images` (of `dataset`) whose suggestion reaches `min_confidence` (0..1)
    and differs from its label that suggestion, as one undoable batch."""
    if not 0 <= min_confidence <= 1:
        raise ValueError("The minimum confidence must be between 0 and 100%.")
    rows = (
        images.exclude(suggestion="")
        .filter(suggestion_confidence__gte=min_confidence)
        .exclude(label__name=F("suggestion"))
        .values_list("pk", "suggestion", "label_version")
    )
    edits = [LabelEdit(pk, suggestion, version) for pk, suggestion, version in rows]
    return images_label_set(dataset=dataset, edits=edits, user=user, source=ChangeSource.SUGGESTION)


def image_add_correction(
    *, dataset: Dataset, filename: str, data: bytes, label_name: str, user: AbstractBaseUser | AnonymousUser | None
) -> str:
    """Add an image a user says the model got wrong, with the class they chose (made
    if the dataset lacks it), so the next training run learns it. The image is
    decoded and checked like any import; returns what happened, for people."""
    label_name = clean_label_name(label_name)
    decode_image(data, max_pixels=settings.MAX_IMAGE_PIXELS)  # a clear error before anything is written
    # Added unlabelled, then labelled like any other change: the history says who decided.
    image, added = image_add_or_get(dataset=dataset, filename=filename, data=data)
    if added:
        message = f"Added {filename} to {dataset.name} as {label_name}."
    else:
        message = f"{filename} was already in {dataset.name}; it is now labelled {label_name}."
    image_label_set(image=image, label_name=label_name, user=user, source=ChangeSource.CORRECTION)
    return message
