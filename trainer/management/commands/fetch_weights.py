import json
import socket
from pathlib import Path
from typing import Any
from urllib.error import URLError

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trainer.ml import backbones
from trainer.ml.backbones import Backbone, BackboneFileRefused, WeightsMissing
from trainer.ml.weights import download, install_file, install_from, source_name

# Long enough for a slow mirror to answer, short enough that a host without
# internet access (a firewall dropping packets) fails in seconds, not forever.
DOWNLOAD_TIMEOUT_S = 30
OFFLINE_HINT = "without internet access, copy the files with `fetch_weights --from DIR`"

_COLUMNS = [  # (heading, row key, width, format)
    ("name", "name", 18, "{}"),
    ("title", "title", 18, "{}"),
    ("installed", "installed", 9, "{}"),
    ("MB", "size_mb", 6, "{:.1f}"),
    ("top-1 %", "top1", 7, "{:.1f}"),
    ("features", "feature_dim", 8, "{}"),
    ("px", "image_size", 4, "{}"),
    ("ms/image", "ms_per_image", 8, "{:.1f}"),
    ("installs at", "path", 0, "{}"),
]
_NUMERIC = {"size_mb", "top1", "feature_dim", "image_size", "ms_per_image"}


class Command(BaseCommand):
    help = (
        "Install pretrained backbones: ImageNet weights of keras.applications backbones into Keras' cache "
        "($KERAS_HOME/models), downloaded (needs internet access) or copied from a folder with --from; "
        "an operator's own .keras backbone with --install; --list shows them all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="backbone names (see --list); default: all that apply")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--from", dest="source", type=Path, metavar="DIR", help="copy files from DIR (offline)")
        mode.add_argument("--install", type=Path, metavar="FILE", help="install your own .keras backbone file")
        mode.add_argument("--list", action="store_true", help="show every backbone and whether it is installed")
        parser.add_argument("--json", action="store_true", help="print the --list table as JSON")
        own = parser.add_argument_group("with --install")
        own.add_argument("--name", help="what configs will call it (letters, digits, underscores)")
        own.add_argument("--feature-layer", help="the layer whose output is the features (e.g. avg_pool)")
        own.add_argument("--image-size", type=int, help="the input size, in pixels, it was trained at")
        own.add_argument("--builtin-preprocessing", action="store_true", help="the model rescales 0-255 pixels itself")
        own.add_argument("--title", default="", help="a display name")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"] or options["json"]:  # `--json` alone lists too, rather than download
            self._list(as_json=options["json"])
        elif options["install"]:
            self._install(options)
        elif options["source"]:
            self._copy(options["source"], options["names"])
        else:
            self._download(self._named(options["names"]) or downloadable())

    def _named(self, names: list[str]) -> list[Backbone]:
        known = backbones.known()
        if unknown := [n for n in names if n not in known]:
            raise CommandError(f"no pretrained backbone named {', '.join(unknown)}; choose from {', '.join(known)}")
        return [known[n] for n in names]

    def _list(self, *, as_json: bool) -> None:
        rows = backbones.table()
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        self.stdout.write(_table_line({key: heading for heading, key, *_ in _COLUMNS}, heading=True))
        for row in rows:
            self.stdout.write(_table_line(row))

    def _install(self, options: dict[str, Any]) -> None:
        if options["names"]:
            raise CommandError("--install takes one file; name it with --name, not as an argument")
        required = {"--name": "name", "--feature-layer": "feature_layer", "--image-size": "image_size"}
        if missing := [flag for flag, key in required.items() if not options[key]]:
            raise CommandError(f"--install needs {', '.join(missing)}")
        path: Path = options["install"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file")
        try:
            done = install_file(path=path, name=options["name"], feature_layer=options["feature_layer"],
                                image_size=options["image_size"], title=options["title"],
                                builtin_preprocessing=options["builtin_preprocessing"])  # fmt: skip
        except BackboneFileRefused as exc:
            raise CommandError(str(exc)) from exc
        b = done.backbone
        self.stdout.write(f"installed {b.name} ({done.path})")
        self.stdout.write(f"  {b.feature_dim} features from layer {b.feature_layer!r} at {b.image_size} px, "
                          f"preprocessing {b.preprocessing}, sha256 {b.sha256}")  # fmt: skip

    def _copy(self, folder: Path, names: list[str]) -> None:
        if not folder.is_dir():
            raise CommandError(f"{folder} is not a folder")
        wanted = self._named(names) or list(backbones.CATALOGUE.values())
        present = [b for b in wanted if (folder / source_name(b)).is_file()]
        # Named explicitly and absent is a failure; absent from "whatever is there" is not.
        failed = [f"{b.name} ({source_name(b)} is not in {folder})" for b in wanted if b not in present and names]
        for backbone in present:
            try:
                (done,) = install_from(folder, [backbone])
            except BackboneFileRefused as exc:  # the others still install; this one is reported below
                failed.append(f"{backbone.name} refused: {exc}")
                continue
            self.stdout.write(f"installed {backbone.name} ({done.path})")
        if not names:
            self.stdout.write(f"found {len(present)} of {len(wanted)} catalogue backbone files in {folder}")
        if not present and not names:
            looked_for = ", ".join(source_name(b) for b in wanted)
            raise CommandError(f"no backbone files in {folder}; looked for {looked_for}")
        _fail_if(failed)

    def _download(self, wanted: list[Backbone]) -> None:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # Keras' urlretrieve takes no timeout of its own
        try:
            failed = [failure for b in wanted if (failure := self._download_one(b))]
        finally:
            socket.setdefaulttimeout(previous)
        _fail_if(failed, hint=OFFLINE_HINT if any("download failed" in f for f in failed) else "")

    def _download_one(self, backbone: Backbone) -> str | None:
        """Install one backbone; the failure, if any, as a line of the final error."""
        if backbone.is_file and backbones.is_installed(backbone):  # nothing to download, and nothing missing
            self.stdout.write(f"installed {backbone.name} ({backbones.weight_path(backbone)})")
            return None
        try:
            path = download(backbone)  # a file already in Keras' cache with the right hash is kept
        except WeightsMissing as exc:  # a backbone file: there is nothing to download
            return f"{backbone.name}: {exc}"
        except Exception as exc:  # Keras raises plain Exception and ValueError for a failed download
            return f"{backbone.name}: download failed ({_reason(exc)}) from {backbone.url}"
        self.stdout.write(f"installed {backbone.name} ({path})")
        return None


def downloadable() -> list[Backbone]:
    return [b for b in backbones.CATALOGUE.values() if not b.is_file]


def _fail_if(failed: list[str], hint: str = "") -> None:
    if failed:
        lines = "\n".join(f"  - {line}" for line in failed)
        raise CommandError(f"{len(failed)} backbone(s) not installed:\n{lines}" + (f"\n({hint})" if hint else ""))


def _reason(exc: Exception) -> str:
    # Keras wraps urllib's error in a plain Exception repeating the URL; the cause is what tells.
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, URLError):
        return str(cause.reason)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _table_line(row: dict[str, Any], *, heading: bool = False) -> str:
    cells = []
    for _, key, width, fmt in _COLUMNS:
        text = str(row[key]) if heading else _cell(row[key], fmt)
        cells.append(text.rjust(width) if key in _NUMERIC else text.ljust(width))
    return "  ".join(cells).rstrip()


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return fmt.format(value)
