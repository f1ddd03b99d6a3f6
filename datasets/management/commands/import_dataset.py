import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from classifier_site.runs import RunStatus
from datasets.models import Dataset
from datasets.services import dataset_create, import_local_file


class Command(BaseCommand):
    help = (
        "Import images into a dataset (created if needed): a zip or tar(.gz) of class folders, optionally "
        "under train/, val/, test/; a zip of unlabelled images; a CSV manifest (filename,label[,split]) "
        "beside the images; or the CIFAR-10 python tarball."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="path to the archive")
        parser.add_argument("--name", required=True, help="dataset name (created if it does not exist)")
        parser.add_argument("--label", default="", help="class for every image (for archives of loose images)")
        parser.add_argument("--json", action="store_true", help="print the import report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        source = Path(options["source"])
        if not source.is_file():
            raise CommandError(f"{source}: no such file")
        dataset = Dataset.objects.filter(name=options["name"]).first()
        created = dataset is None
        dataset = dataset or dataset_create(name=options["name"])
        if not options["json"]:
            self.stderr.write(f"Importing {source} into {dataset.name!r}...")
        record = import_local_file(dataset=dataset, path=source, label=options["label"])
        if record.status != RunStatus.SUCCEEDED:
            if created:
                dataset.delete()
            raise CommandError(f"{source}: {record.error}")
        report = record.report
        if options["json"]:
            self.stdout.write(
                json.dumps({"dataset": dataset.pk, "import": record.pk, "format": record.format, **report})
            )
            return
        self.stdout.write(
            f"Dataset {dataset.name!r} (id {dataset.pk}), {record.format}: imported {report['imported']} images, "
            f"{report['duplicates']} duplicates skipped, {len(report['skipped'])} files rejected."
        )
        for name, count in report["per_class"].items():
            self.stdout.write(f"  {name}: {count}")
        for skipped in report["skipped"]:
            self.stdout.write(self.style.WARNING(f"  skipped {skipped['file']}: {skipped['reason']}"))
