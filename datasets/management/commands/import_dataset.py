import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets.models import Dataset
from datasets.services import ImportFailed, dataset_create, dataset_import_zip


class Command(BaseCommand):
    help = "Import a zip of class folders (cat/x.jpg, dog/y.png) into a dataset, creating it if needed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="path to a .zip archive of class folders")
        parser.add_argument("--name", required=True, help="dataset name (created if it does not exist)")
        parser.add_argument("--json", action="store_true", help="print the import report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        source = Path(options["source"])
        if not source.is_file():
            raise CommandError(f"{source}: no such file")
        dataset = Dataset.objects.filter(name=options["name"]).first()
        created = dataset is None
        dataset = dataset or dataset_create(name=options["name"])
        try:
            report = dataset_import_zip(dataset=dataset, source=source)
        except ImportFailed as exc:
            if created:
                dataset.delete()
            raise CommandError(f"{source}: {exc}") from exc
        if options["json"]:
            self.stdout.write(json.dumps({"dataset": dataset.pk, **report.as_dict()}))
            return
        self.stdout.write(f"Dataset {dataset.name!r} (id {dataset.pk}): imported {report.imported} images, "
                          f"{report.duplicates} duplicates skipped, {len(report.skipped)} files rejected.")  # fmt: skip
        for name, count in sorted(report.per_class.items()):
            self.stdout.write(f"  {name}: {count}")
        for name, reason in report.skipped:
            self.stdout.write(self.style.WARNING(f"  skipped {name}: {reason}"))
