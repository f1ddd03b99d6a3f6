"""`manage.py verify_storage [--delete-orphans]`: media storage against the rows that name its files."""

import json
from datetime import timedelta
from itertools import chain
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.defaultfilters import pluralize

from classifier_site.storage_audit import Audit, audit, file_field_references
from datasets.selectors import dataset_stored_files
from trainer.jobs.selectors import training_stored_files
from trainer.quality.selectors import quality_stored_files
from trainer.registry.selectors import registry_stored_files


class Command(BaseCommand):
    help = (
        "Check that every image has its file with its stored SHA-256, every model file and export matches "
        "its SHA-256, every other file a row names exists, and list orphan files (in storage, named by no "
        "row). Exits non-zero when anything is wrong. Run it after restoring a backup."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--delete-orphans", action="store_true", help="remove the orphan files")
        parser.add_argument(
            "--grace-minutes", type=float, default=60.0,
            help="orphans younger than this are only listed, never removed nor counted as wrong: an import "
            "or a training run writes its files before its rows commit (default 60)",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", help="print the findings as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        # Apps' references first: they carry the hashes; the FileField sweep catches any other table.
        references = chain(
            dataset_stored_files(),
            registry_stored_files(),
            training_stored_files(),
            quality_stored_files(),
            file_field_references(),
        )
        grace = timedelta(minutes=options["grace_minutes"])
        found = audit(references, grace=grace, delete_orphans=options["delete_orphans"])
        if options["json"]:
            self.stdout.write(json.dumps(found.as_dict()))
        else:
            self._print(found)
        if not found.ok:
            raise CommandError(_summary(found))

    def _print(self, found: Audit) -> None:
        for ref in found.missing:
            self.stdout.write(self.style.ERROR(f"missing  {ref.name}  ({ref.owner})"))
        for ref in found.damaged:
            self.stdout.write(self.style.ERROR(f"damaged  {ref.name}  ({ref.owner}: its SHA-256 differs)"))
        for name in found.orphans:
            self.stdout.write(self.style.WARNING(f"orphan   {name}"))
        for name in found.deleted:
            self.stdout.write(f"deleted  {name}  (orphan)")
        for name in found.recent:
            self.stdout.write(f"recent   {name}  (named by no row yet, kept: it may be being written)")
        self.stdout.write(
            f"{found.files} file{pluralize(found.files)} in storage, {found.named} named by rows, "
            f"{found.hashed} checked against their SHA-256."
        )
        if found.ok:
            self.stdout.write(self.style.SUCCESS(f"Storage is consistent{_deleted(found)}."))


def _summary(found: Audit) -> str:
    counts = ((len(found.missing), "missing"), (len(found.damaged), "damaged"), (len(found.orphans), "orphan"))
    parts = [f"{n} {word}{pluralize(n) if word == 'orphan' else ''}" for n, word in counts if n]
    hint = " (--delete-orphans removes the orphans)" if found.orphans else ""
    return f"storage is not consistent: {', '.join(parts)}{_deleted(found)}{hint}"


def _deleted(found: Audit) -> str:
    n = len(found.deleted)
    return f"; {n} orphan{pluralize(n)} deleted" if n else ""
