"""Reading uploaded archives entry by entry, defensively. Pure Python: no Django.

A reader turns a zip, a tar(.gz), a CSV manifest inside either, or the CIFAR-10
python tarball into a stream of `Entry` objects: each one either carries the
bytes of a candidate image with its class and split, or the reason it was
skipped. Whatever threatens the whole import (a zip bomb, a damaged archive)
raises `ArchiveRefused` instead.
"""

import csv
import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

# Files that operating systems leave in archives; skipped without a word.
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
IGNORED_FOLDERS = {"__MACOSX"}
NESTED_ARCHIVES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}  # fmt: skip
CIFAR_FOLDER = "cifar-10-batches-py"
CHUNK = 1 << 20


# A CSV manifest: file name (inside the archive) -> (class, predefined split).
Manifest = dict[str, tuple[str | None, str | None]]


class ArchiveRefused(Exception):
    """The whole archive is refused; the message says why, for people."""


@dataclass(frozen=True)
class Limits:
    max_entry_bytes: int = 64 * 2**20  # one image, decompressed
    max_total_bytes: int = 16 * 2**30  # everything decompressed, counted while streaming
    max_entries: int = 2_000_000
    max_manifest_bytes: int = 64 * 2**20


@dataclass
class Entry:
    name: str  # the path inside the archive, for the report
    data: bytes | None = None
    label: str | None = None
    split: str | None = None  # a predefined split, or None to let the dataset decide
    skip: str | None = None  # why this entry is not imported
    pixels: np.ndarray | None = None  # uint8 (h, w, 3) the importer encodes as PNG, instead of `data`


@dataclass
class Source:
    format: str
    total: int | None
    entries: Iterator[Entry]


@dataclass
class _Budget:
    limits: Limits
    bytes_read: int = 0
    entries: int = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveRefused(f"more than {self.limits.max_entries:,} entries")

    def read(self, stream: IO[bytes], name: str) -> bytes | None:
        """Read one entry, counting real decompressed bytes; None when it is too large."""
        chunks, size = [], 0
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            self.bytes_read += len(chunk)
            if self.bytes_read > self.limits.max_total_bytes:
                raise ArchiveRefused(
                    f"expands to more than {self.limits.max_total_bytes:,} bytes (stopped at {name}: zip bomb?)"
                )
            if size > self.limits.max_entry_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


def open_source(path: Path, *, limits: Limits = Limits(), label: str | None = None) -> Source:
    """Recognise the archive by its bytes (not its name) and return its entries."""
    if zipfile.is_zipfile(path):
        return _zip_source(path, limits, label)
    if _is_tar(path):
        return _tar_source(path, limits, label)
    raise ArchiveRefused("not a zip or tar archive")


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


# --- where an entry goes -----------------------------------------------------------


def split_path(name: str) -> tuple[str, ...]:
    """Path parts the way PurePosixPath gives them, without its cost (60,000 names an import)."""
    return tuple(part for part in name.split("/") if part and part != ".")


def _suffix(name: str) -> str:
    return os.path.splitext(name.rsplit("/", 1)[-1])[1]


def _unsafe_path(name: str) -> bool:
    parts = split_path(name)
    return "\\" in name or "\x00" in name or name.startswith("/") or ".." in parts or (bool(parts) and ":" in parts[0])


def _ignored(parts: tuple[str, ...]) -> bool:
    return bool(parts) and (parts[0] in IGNORED_FOLDERS or parts[-1] in IGNORED_NAMES or parts[-1].startswith("._"))


def _common_folder(names: list[str]) -> int:
    """1 when every file sits below class folders in one wrapping folder (`photos/cat/x.jpg`).

    A lone folder directly holding the files (`cat/x.jpg`) is a class, not a wrapper.
    """
    paths = [split_path(n) for n in names]
    firsts = {p[0] for p in paths}
    if len(firsts) != 1 or any(len(p) < 3 for p in paths):
        return 0
    return int(next(iter(firsts)).lower() not in SPLIT_FOLDERS)


def place(parts: tuple[str, ...], label: str | None) -> tuple[str | None, str | None]:
    """(class, predefined split) from a path below the wrapping folder."""
    split = None
    if len(parts) > 1 and parts[0].lower() in SPLIT_FOLDERS:
        split, parts = SPLIT_FOLDERS[parts[0].lower()], parts[1:]
    if label is not None:
        return label, split
    return (parts[0] if len(parts) > 1 else None), split


def _problem(name: str, suffix: str) -> str | None:
    if _unsafe_path(name):
        return "path escapes archive"
    if suffix.lower() in NESTED_ARCHIVES:
        return "nested archive (extract it and upload its contents)"
    return None


# --- zip -------------------------------------------------------------------------------


def _zip_source(path: Path, limits: Limits, label: str | None) -> Source:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveRefused(f"damaged zip archive ({exc})") from exc
    if len(infos) > limits.max_entries:
        raise ArchiveRefused(f"more than {limits.max_entries:,} entries")
    _check_overlaps(infos)
    names = [i.filename for i in infos if not _ignored(split_path(i.filename))]
    strip = _common_folder([n for n in names if not _unsafe_path(n)])  # those are skipped anyway
    manifest = _find_manifest(names, strip)

    def entries() -> Iterator[Entry]:
        budget = _Budget(limits)
        with zipfile.ZipFile(path) as archive:
            rows = _manifest_rows(archive.open(manifest), limits) if manifest else None
            for info in infos:
                parts = split_path(info.filename)
                if _ignored(parts) or info.filename == manifest:
                    continue
                budget.entry()
                yield _zip_entry(archive, info, parts[strip:], budget, label, rows)
            yield from _missing_from_manifest(rows)

    fmt = "zip + CSV manifest" if manifest else "zip"
    return Source(format=fmt, total=len(names) - bool(manifest), entries=entries())


def _check_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    # Entries sharing compressed bytes are the overlapping-entry zip bomb, which
    # Python 3.11.7's zipfile does not stop by itself.
    end = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < end:
            raise ArchiveRefused("overlapping zip entries (zip bomb)")
        end = info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size


def _zip_entry(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    parts: tuple[str, ...],
    budget: _Budget,
    label: str | None,
    rows: Manifest | None,
) -> Entry:
    name = info.filename
    problem = _problem(name, _suffix(name))
    if problem is None and info.flag_bits & 0x1:
        problem = "encrypted entry"
    if problem is None and (info.external_attr >> 16) & 0o170000 == 0o120000:
        problem = "symbolic link"
    if problem:
        return Entry(name, skip=problem)
    where = _where(parts, label, rows)
    if isinstance(where, str):
        return Entry(name, skip=where)
    try:
        with archive.open(info) as stream:
            data = budget.read(stream, name)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, OSError) as exc:
        return Entry(name, skip=f"damaged archive entry ({exc})")
    except RuntimeError as exc:  # zipfile's word for "password required"
        return Entry(name, skip=f"unreadable entry ({exc})")
    if data is None:
        return Entry(name, skip=f"larger than {budget.limits.max_entry_bytes:,} bytes uncompressed")
    return Entry(name, data=data, label=where[0], split=where[1])


def _where(parts: tuple[str, ...], label: str | None, rows: Manifest | None) -> tuple[str | None, str | None] | str:
    if rows is None:
        return place(parts, label)
    key = "/".join(parts)
    if key not in rows:
        return "not listed in the manifest"
    return rows.pop(key)


# --- CSV manifest ------------------------------------------------------------------------


def _find_manifest(names: list[str], strip: int) -> str | None:
    csvs = [n for n in names if len(split_path(n)) == strip + 1 and n.lower().endswith(".csv")]
    return csvs[0] if len(csvs) == 1 else None


def _manifest_rows(stream: IO[bytes], limits: Limits) -> Manifest:
    """filename -> (class, split) from `filename,label[,split]` (a header row is required)."""
    raw = stream.read(limits.max_manifest_bytes + 1)
    if len(raw) > limits.max_manifest_bytes:
        raise ArchiveRefused(f"manifest larger than {limits.max_manifest_bytes:,} bytes")
    try:
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "filename" not in columns or "label" not in columns:
            raise ArchiveRefused("manifest needs a header row with filename and label columns")
        return {row[columns["filename"]].strip(): _manifest_values(row, columns) for row in reader}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ArchiveRefused(f"unreadable manifest ({exc})") from exc


def _manifest_values(row: dict[str, str], columns: dict[str, str]) -> tuple[str | None, str | None]:
    label = (row.get(columns["label"]) or "").strip() or None
    split = (row.get(columns["split"]) or "").strip().lower() if "split" in columns else ""
    if split and split not in SPLIT_FOLDERS:
        raise ArchiveRefused(f"manifest: unknown split {split!r} (use train, val or test)")
    return label, SPLIT_FOLDERS.get(split)


def _missing_from_manifest(rows: Manifest | None) -> Iterator[Entry]:
    for name in rows or {}:
        yield Entry(name, skip="listed in the manifest but not in the archive")


# --- tar ------------------------------------------------------------------------------------


def _tar_source(path: Path, limits: Limits, label: str | None) -> Source:
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveRefused(f"damaged tar archive ({exc})") from exc
    if first is not None and split_path(first.name)[:1] == (CIFAR_FOLDER,):
        return Source(format="CIFAR-10 python tarball", total=60_000, entries=_cifar_entries(path, limits))
    return Source(format="tar", total=None, entries=_tar_entries(path, limits, label))


def _tar_entries(path: Path, limits: Limits, label: str | None) -> Iterator[Entry]:
    budget = _Budget(limits)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if not m.isdir()]
            names = [m.name for m in members if not _ignored(split_path(m.name))]
            strip = _common_folder([n for n in names if not _unsafe_path(n)])  # those are skipped anyway
            manifest = _find_manifest(names, strip)
            rows = _tar_manifest(tar, manifest, limits) if manifest else None
            for member in members:
                parts = split_path(member.name)
                if not _ignored(parts) and member.name != manifest:
                    budget.entry()
                    yield _tar_entry(tar, member, parts[strip:], budget, label, rows)
            yield from _missing_from_manifest(rows)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveRefused(f"damaged tar archive ({exc})") from exc


def _tar_manifest(tar: tarfile.TarFile, name: str, limits: Limits) -> Manifest:
    stream = tar.extractfile(name)
    if stream is None:
        raise ArchiveRefused("the manifest is not a regular file")
    return _manifest_rows(stream, limits)


def _tar_entry(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parts: tuple[str, ...],
    budget: _Budget,
    label: str | None,
    rows: Manifest | None,
) -> Entry:
    name = member.name
    problem = _problem(name, _suffix(name))
    if problem is None and (member.issym() or member.islnk()):
        problem = "symbolic link" if member.issym() else "hard link"
    if problem is None and not member.isfile():
        problem = "not a regular file"
    if problem:
        return Entry(name, skip=problem)
    where = _where(parts, label, rows)
    if isinstance(where, str):
        return Entry(name, skip=where)
    stream = tar.extractfile(member)
    data = budget.read(stream, name) if stream else None
    if data is None:
        return Entry(name, skip=f"larger than {budget.limits.max_entry_bytes:,} bytes uncompressed")
    return Entry(name, data=data, label=where[0], split=where[1])


# --- CIFAR-10 -----------------------------------------------------------------------------


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, lists and dicts and nothing else: an upload is never trusted code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise ArchiveRefused(f"CIFAR batch contains a forbidden object ({module}.{name})")
        return super().find_class(module, name)


def _unpickle(stream: IO[bytes]) -> dict[bytes, Any]:
    try:
        value = _ArraysOnly(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ArchiveRefused(f"damaged CIFAR batch ({exc})") from exc
    if not isinstance(value, dict):
        raise ArchiveRefused("damaged CIFAR batch (not a dictionary)")
    return value


_CIFAR_BATCHES = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]


def _cifar_entries(path: Path, limits: Limits) -> Iterator[Entry]:
    """60,000 32x32 images as PNG entries; CIFAR's own test batch stays the test split."""
    try:
        with tarfile.open(path, "r:*") as tar:
            read = _member_reader(tar, limits)
            names = [n.decode() for n in _unpickle(read("batches.meta"))[b"label_names"]]
            for batch, split in _CIFAR_BATCHES:
                yield from _cifar_batch(batch, _unpickle(read(batch)), names, split)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveRefused(f"damaged CIFAR-10 tarball ({exc})") from exc


def _member_reader(tar: tarfile.TarFile, limits: Limits) -> Callable[[str], IO[bytes]]:
    budget = _Budget(Limits(max_entry_bytes=64 * 2**20, max_total_bytes=limits.max_total_bytes))

    def read(name: str) -> IO[bytes]:
        try:
            stream = tar.extractfile(f"{CIFAR_FOLDER}/{name}")
        except KeyError as exc:
            raise ArchiveRefused(f"CIFAR-10 tarball without {name}") from exc
        data = budget.read(stream, name) if stream else None
        if data is None:
            raise ArchiveRefused(f"CIFAR-10 batch {name} is not a regular file or too large")
        return io.BytesIO(data)

    return read


def _cifar_batch(batch: str, content: dict[bytes, Any], names: list[str], split: str) -> Iterator[Entry]:
    pixels = np.asarray(content[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = content[b"labels"]
    if len(labels) != len(pixels):
        raise ArchiveRefused(f"CIFAR batch {batch}: {len(labels)} labels for {len(pixels)} images")
    for index, (image, target) in enumerate(zip(pixels, labels, strict=True)):
        # Encoded as PNG later, in the importer's threads.
        yield Entry(f"{batch}[{index}]", pixels=image, label=names[int(target)], split=split)


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of `pixels` (h, w, 3). Written directly because Pillow's PNG
    writer spends ~100 µs of Python per tiny image, 60,000 times for CIFAR-10."""
    height, width = pixels.shape[:2]
    rows = np.zeros((height, width * 3 + 1), dtype=np.uint8)  # filter byte 0 (none) per row
    rows[:, 1:] = pixels.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
