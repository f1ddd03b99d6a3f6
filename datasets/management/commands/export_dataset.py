"""`manage.py export_dataset DATASET [--output PATH]`: a dataset as the zip its import takes back."""

import json
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets.exports import ExportRefused, dataset_export_write, export_file_name
from datasets.selectors import dataset_find


class Command(BaseCommand):
    help = (
        "Write a dataset as a zip of class folders per split (train/cat/<sha256>.png; unlabelled images "
        "directly in their split folder) with manifest.csv (filename,label,split,sha256), label_history.json "
        "and dataset.json. Runs here, not on a worker, and records nothing. `import_dataset` takes it back."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", help="dataset name or id")
        parser.add_argument("--output", type=Path, help="file to write (default: {name}-{id}-export.zip here)")
        parser.add_argument("--json", action="store_true", help="print path, size, SHA-256 and counts as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = dataset_find(options["dataset"])
        if dataset is None:
            raise CommandError(f"no dataset {options['dataset']!r}")
        output = (options["output"] or Path(export_file_name(dataset))).resolve()
        if not output.parent.is_dir():
            raise CommandError(f"{output.parent}: no such folder")
        partial = output.with_name(f".{output.name}.partial")  # a zip under the real name is always whole
        try:
            written = dataset_export_write(dataset=dataset, output=partial)
            os.replace(partial, output)
        except ExportRefused as exc:
            raise CommandError(str(exc)) from exc
        finally:
            partial.unlink(missing_ok=True)
        report = written.report
        if options["json"]:
            summary = {"dataset": dataset.pk, "path": str(output), "size": written.size, "sha256": written.sha256}
            self.stdout.write(json.dumps({**summary, **report}))
            return
        self.stdout.write(
            f"{output}\n{written.size} bytes, SHA-256 {written.sha256}\n{report['images']} images "
            f"({report['unlabelled']} unlabelled) in {len(report['classes'])} classes, "
            f"{report['label_changes']} label changes"
        )
