from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trainer.ml.config import BACKBONES
from trainer.ml.weights import WEIGHT_FILES, WeightsMissing, cache_dir, download, install_from, weights_path


class Command(BaseCommand):
    help = (
        "Install ImageNet weights for the pretrained backbones into Keras' cache ($KERAS_HOME/models): "
        "downloaded (needs internet access) or copied from a folder with --from."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("archs", nargs="*", help=f"any of {', '.join(BACKBONES)}; default: all of them")
        parser.add_argument("--from", dest="source", type=Path, help="copy the files from this folder (offline)")

    def handle(self, *args: Any, **options: Any) -> None:
        archs = options["archs"] or list(BACKBONES)
        if unknown := [a for a in archs if a not in BACKBONES]:
            raise CommandError(f"no pretrained backbone named {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
        if options["source"]:
            if not options["source"].is_dir():
                raise CommandError(f"{options['source']} is not a folder")
            copied = install_from(options["source"], archs)
            for path in copied:
                self.stdout.write(f"installed {path}")
        failed = []
        for arch in archs:
            try:
                path = weights_path(arch)
            except WeightsMissing:
                if options["source"]:
                    failed.append(f"{arch} ({WEIGHT_FILES[arch]} is not in {options['source']})")
                    continue
                try:
                    path = download(arch)
                except Exception as exc:  # Keras raises several kinds for a failed download
                    failed.append(f"{arch} (download failed: {exc})")
                    continue
            self.stdout.write(f"{arch}: ready ({path})")
        if failed:
            raise CommandError(f"weights missing in {cache_dir()} for: {'; '.join(failed)}")
