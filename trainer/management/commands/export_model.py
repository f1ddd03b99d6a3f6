"""`manage.py export_model VERSION --format F [--output PATH]`: a model version in another runtime's format."""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trainer.models import ExportFormat, ModelVersion


class Command(BaseCommand):
    help = (
        "Write a model version as .keras, a TensorFlow SavedModel (zipped), TFLite (LiteRT) or ONNX. "
        "Runs here (TensorFlow loads in this process), not on a worker, and records nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("version", type=int, help="model version id")
        parser.add_argument("--format", required=True, choices=ExportFormat.values, dest="export_format")
        parser.add_argument("--output", type=Path, help="file to write (default: model-v{VERSION}.{ext} here)")
        parser.add_argument("--json", action="store_true", help="print path, size and SHA-256 as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        from trainer.ml.export import ExportError
        from trainer.registry.exports import ExportRefused, export_file_name, model_export_write
        from trainer.registry.files import NoModelAvailable

        version = ModelVersion.objects.filter(pk=options["version"]).first()
        if version is None:
            raise CommandError(f"no model version {options['version']}")
        fmt = options["export_format"]
        output = options["output"] or Path(export_file_name(version, fmt))
        try:
            written = model_export_write(version=version, format=fmt, output=output.resolve())
        except (ExportRefused, ExportError, NoModelAvailable) as exc:
            raise CommandError(str(exc)) from exc
        summary = {"model_version": version.pk, "format": fmt, "path": str(written.path), "size": written.size,
                   "sha256": written.sha256}  # fmt: skip
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        self.stdout.write(f"{written.path}\n{written.size} bytes, SHA-256 {written.sha256}")
