"""Media storage checked against the rows that name its files (`manage.py verify_storage`):
every named file is there, those with a stored SHA-256 still have it, and files no row
names (orphans) are listed, or removed.

Importing no app, it sits below them: apps describe their files as `Reference`s (the
hashes they keep, names held in plain text columns), and every FileField of every
installed model is read from the app registry as well, so a table added later can
never have its files taken for orphans.
"""

import hashlib
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from django.apps import apps
from django.core.files.storage import Storage, default_storage
from django.db import models
from django.utils import timezone

CHUNK = 1 << 20


@dataclass(frozen=True)
class Reference:
    """A file a row names: its name in storage, the row (for people) and, where the row
    keeps one, the SHA-256 its content must have."""

    name: str
    owner: str  # "image 12", "model version 3"
    sha256: str = ""


@dataclass
class Audit:
    files: int = 0  # in storage
    named: int = 0  # distinct names the rows refer to
    hashed: int = 0  # of those, checked against a stored SHA-256
    missing: list[Reference] = field(default_factory=list)
    damaged: list[Reference] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # left in storage
    recent: list[str] = field(default_factory=list)  # orphans younger than the grace period: being written?
    deleted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.damaged or self.orphans)

    def as_dict(self) -> dict[str, object]:
        refs = lambda found: [{"name": r.name, "owner": r.owner} for r in found]  # noqa: E731
        return {"ok": self.ok, "files": self.files, "named": self.named, "hashed": self.hashed,
                "missing": refs(self.missing), "damaged": refs(self.damaged), "orphans": self.orphans,
                "recent_orphans": self.recent, "deleted": self.deleted}  # fmt: skip


def file_field_references() -> Iterator[Reference]:
    """Every name in every FileField of every installed model."""
    for model in apps.get_models():
        for name in [f.name for f in model._meta.concrete_fields if isinstance(f, models.FileField)]:
            rows = model._default_manager.exclude(**{name: ""}).exclude(**{f"{name}__isnull": True})
            for pk, stored in rows.values_list("pk", name).iterator(chunk_size=2000):
                yield Reference(stored, f"{model._meta.verbose_name} {pk} ({name})")


def storage_names(storage: Storage = default_storage, folder: str = "") -> Iterator[str]:
    """Every file in storage, walking its folders (on S3, its key prefixes)."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:  # no media folder yet (a fresh site), or one removed meanwhile
        return
    for name in files:
        yield posixpath.join(folder, name) if folder else name
    for sub in folders:
        yield from storage_names(storage, posixpath.join(folder, sub) if folder else sub)


def audit(
    references: Iterable[Reference],
    *,
    storage: Storage = default_storage,
    grace: timedelta = timedelta(hours=1),
    delete_orphans: bool = False,
) -> Audit:
    """Check every reference against `storage`, then find (and with `delete_orphans`
    remove) the files none names. Orphans younger than `grace` are only listed: an
    import or a training run writes its files before its rows commit."""
    present = set(storage_names(storage))
    by_name = _by_name(references)
    result = Audit(files=len(present), named=len(by_name))
    for name, refs in by_name.items():
        _check(name, refs, present, storage, result)
    for name in sorted(present - by_name.keys()):
        _orphan(name, storage, grace, delete_orphans, result)
    return result


def _by_name(references: Iterable[Reference]) -> dict[str, list[Reference]]:
    """References grouped by file name. One without a hash adds nothing to a name already
    named (the row's FileField, after the app named it with its hash)."""
    grouped: dict[str, list[Reference]] = defaultdict(list)
    for ref in references:
        known = grouped[ref.name]
        if (ref.sha256 and ref not in known) or not known:
            known.append(ref)
    return grouped


def _check(name: str, refs: list[Reference], present: set[str], storage: Storage, result: Audit) -> None:
    if name not in present:
        result.missing.append(_first(refs))
        return
    expected = {r.sha256 for r in refs if r.sha256}
    if not expected:
        return
    result.hashed += 1
    actual = _sha256(storage, name)
    result.damaged += [r for r in refs if r.sha256 and r.sha256 != actual]


def _first(refs: list[Reference]) -> Reference:
    """The reference to name a missing file by: one with a hash says the most."""
    return next((r for r in refs if r.sha256), refs[0])


def _sha256(storage: Storage, name: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with storage.open(name, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return None  # vanished since the listing, or unreadable: damaged either way
    return digest.hexdigest()


def _orphan(name: str, storage: Storage, grace: timedelta, delete: bool, result: Audit) -> None:
    try:
        recent = storage.get_modified_time(name) > timezone.now() - grace
    except (OSError, NotImplementedError):
        recent = False
    if recent:
        result.recent.append(name)
    elif delete:
        storage.delete(name)
        result.deleted.append(name)
    else:
        result.orphans.append(name)
