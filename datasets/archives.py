"""Reading uploaded archives entry by entry, defensively. Pure Python: no Django.

A reader turns a zip, a tar(.gz), a CSV manifest inside either, or the CIFAR-10
python tarball into a stream of `Entry` objects: each one either carries the
bytes of a candidate image with its class and split, or the reason it was
skipped. Whatever threatens the whole import (a zip bomb, a damaged archive)
raises `ArchiveRefused` instead.
"""

import bz2
import csv
import gzip
import io
import lzma
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

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
    max_entry_bytes: int = 64 * 2**20  # one image, decompressed: larger ones are skipped unread
    # What the archive may expand to, every byte counted (headers, skipped members). A tar is
    # read twice (to list it, then to import it), each pass stopped at this.
    max_total_bytes: int = 16 * 2**30
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
class Budget:
    """What one import has decompressed. Every byte a reader is handed goes through
    `count`, whichever code path asked for it, so nothing decompresses outside it."""

    limits: Limits
    decompressed: int = 0  # every pass together: what reading the archive cost
    this_pass: int = 0  # the current pass over the archive: what it expands to
    entries: int = 0

    def new_pass(self) -> None:
        self.this_pass = 0

    def count(self, size: int, name: str) -> None:
        self.decompressed += size
        self.this_pass += size
        if self.this_pass > self.limits.max_total_bytes:
            raise self.exceeded(name)

    def exceeded(self, name: str) -> ArchiveRefused:
        return ArchiveRefused(
            f"expands to more than {self.limits.max_total_bytes:,} bytes (stopped at {name}: zip bomb?)"
        )

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveRefused(f"more than {self.limits.max_entries:,} entries")

    def too_large(self) -> str:
        return f"larger than {self.limits.max_entry_bytes:,} bytes uncompressed"


class _Metered:
    """A reader that counts what it hands on against the budget; `where` names the
    member being read, for the message."""

    def __init__(self, stream: IO[bytes], budget: Budget, where: str) -> None:
        self.stream, self.budget, self.where = stream, budget, where

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data = self.stream.read(size)
        self.budget.count(len(data), self.where)
        return data


def _read_capped(stream: IO[bytes] | _Metered, limit: int) -> bytes | None:
    """All of a stream in memory, or None (having read at most `limit` + 1 bytes) when it is larger."""
    chunks, size = [], 0
    while chunk := stream.read(min(CHUNK, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Source:
    format: str
    total: int | None
    entries: Iterator[Entry]
    budget: Budget


def open_source(path: Path, *, limits: Limits = Limits(), label: str | None = None) -> Source:
    """Recognise the archive by its first bytes (not its name) and return its entries."""
    budget = Budget(limits)
    kind = _kind(path)
    if kind == "zip":
        return _zip_source(path, budget, label)
    return _tar_source(path, kind, budget, label)


# Signatures at the start of the file; a plain tar says "ustar" at 257 (old ones say
# nothing, and are known by their first header's checksum instead).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED_TAR = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_PROBE_BYTES = 512


def _kind(path: Path) -> str:
    """zip, gz, bz2, xz or tar, from a bounded prefix: trial opens read a file of zeros whole."""
    with path.open("rb") as file:
        head = file.read(_PROBE_BYTES)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    kind = next((kind for magic, kind in _COMPRESSED_TAR.items() if head.startswith(magic)), None)
    if kind or head[257:262] == b"ustar":
        return kind or "tar"
    # A zip behind a prefix (a self-extracting one): zipfile reads at most 64 KB at the end.
    return "zip" if zipfile.is_zipfile(path) else "tar"


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


def _zip_source(path: Path, budget: Budget, label: str | None) -> Source:
    limits = budget.limits
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
        budget.new_pass()
        with zipfile.ZipFile(path) as archive:
            rows = _manifest_rows(_Metered(archive.open(manifest), budget, manifest), limits) if manifest else None
            for info in infos:
                parts = split_path(info.filename)
                if _ignored(parts) or info.filename == manifest:
                    continue
                budget.entry()
                yield _zip_entry(archive, info, parts[strip:], budget, label, rows)
            yield from _missing_from_manifest(rows)

    fmt = "zip + CSV manifest" if manifest else "zip"
    return Source(format=fmt, total=len(names) - bool(manifest), entries=entries(), budget=budget)


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
    budget: Budget,
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
    if info.file_size > budget.limits.max_entry_bytes:  # declared: refused unread
        return Entry(name, skip=budget.too_large())
    try:
        with archive.open(info) as stream:
            data = _read_capped(_Metered(stream, budget, name), budget.limits.max_entry_bytes)  # actual size
    except (zipfile.BadZipFile, EOFError, NotImplementedError, OSError, zlib.error) as exc:
        return Entry(name, skip=f"damaged archive entry ({exc})")
    except RuntimeError as exc:  # zipfile's word for "password required"
        return Entry(name, skip=f"unreadable entry ({exc})")
    if data is None:
        return Entry(name, skip=budget.too_large())
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


def _manifest_rows(stream: IO[bytes] | _Metered, limits: Limits) -> Manifest:
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
#
# Always read in stream mode, front to back, through a metered reader between the
# decompressor and tarfile: a seekable tarfile decompresses whatever it skips or looks
# up by name (`getmembers()`, `extractfile(name)`) where no budget sees it. Knowing the
# wrapping folder and the manifest needs every name first, so a tar is read twice.

_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_METADATA_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                   tarfile.SOLARIS_XHDTYPE)  # fmt: skip
MAX_TAR_METADATA = 1 << 20


class _BoundedTarInfo(tarfile.TarInfo):
    # tarfile reads a long name or a pax record into memory in one piece, whatever size
    # its header claims; real ones are a few hundred bytes.
    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _METADATA_TYPES and self.size > MAX_TAR_METADATA:
            raise ArchiveRefused(f"tar metadata record of {self.size:,} bytes (the limit is {MAX_TAR_METADATA:,})")
        return super()._proc_member(tarfile)  # type: ignore[misc]


def _decompressed(raw: IO[bytes], kind: str) -> IO[bytes]:
    # Stream readers: each decompresses about what it is asked for (gzip reads ahead 128 KB).
    if kind == "gz":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "bz2":
        return cast(IO[bytes], bz2.BZ2File(raw))
    if kind == "xz":
        return cast(IO[bytes], lzma.LZMAFile(raw, format=lzma.FORMAT_XZ))
    return raw


@contextmanager
def _tar_members(path: Path, kind: str, budget: Budget) -> Iterator[tuple[tarfile.TarFile, Iterator[tarfile.TarInfo]]]:
    """One metered pass over a tar: the archive and its members, in order."""
    budget.new_pass()
    with path.open("rb") as raw, _decompressed(raw, kind) as plain:
        meter = _Metered(plain, budget, "the first header")
        with tarfile.open(fileobj=cast(IO[bytes], meter), mode="r|", tarinfo=_BoundedTarInfo) as tar:
            yield tar, _headers(tar, meter, budget)


def _headers(tar: tarfile.TarFile, meter: _Metered, budget: Budget) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        # Stream mode keeps every header otherwise, and nothing here looks back: without
        # this, memory would grow with the number of members.
        tar.members.clear()  # type: ignore[attr-defined]
        meter.where = member.name
        if member.offset_data + member.size > budget.limits.max_total_bytes:  # the header says it: no need to look
            raise budget.exceeded(member.name)
        yield member


def _tar_source(path: Path, kind: str, budget: Budget, label: str | None) -> Source:
    try:
        with _tar_members(path, kind, budget) as (_, members):
            first = next(members, None)
    except _TAR_ERRORS:
        first = None  # no tar header where one must be
    if first is None:
        raise ArchiveRefused("not a zip or tar archive")
    if split_path(first.name)[:1] == (CIFAR_FOLDER,):
        entries = _cifar_entries(path, kind, budget)
        return Source(format="CIFAR-10 python tarball", total=60_000, entries=entries, budget=budget)
    return Source(format="tar", total=None, entries=_tar_entries(path, kind, budget, label), budget=budget)


def _tar_entries(path: Path, kind: str, budget: Budget, label: str | None) -> Iterator[Entry]:
    try:
        names, tops = _tar_listing(path, kind, budget)
        strip = _common_folder([n for n in names if not _unsafe_path(n)])  # those are skipped anyway
        manifest = _find_manifest(names, strip)
        rows = _tar_manifest(tops[manifest], budget.limits) if manifest else None
        with _tar_members(path, kind, budget) as (tar, members):
            for member in members:
                parts = split_path(member.name)
                if not member.isdir() and not _ignored(parts) and member.name != manifest:
                    budget.entry()
                    yield _tar_entry(tar, member, parts[strip:], budget, label, rows)
        yield from _missing_from_manifest(rows)
    except _TAR_ERRORS as exc:
        raise ArchiveRefused(f"damaged tar archive ({exc})") from exc


def _tar_listing(path: Path, kind: str, budget: Budget) -> tuple[list[str], dict[str, bytes | None]]:
    """The names of the files to import, and the content of the first top-level CSV file:
    the manifest, if there is one, is that file (a file at the top means no wrapping folder)."""
    names: list[str] = []
    tops: dict[str, bytes | None] = {}
    with _tar_members(path, kind, budget) as (tar, members):
        for member in members:
            parts = split_path(member.name)
            if member.isdir() or _ignored(parts):
                continue
            names.append(member.name)
            if len(names) > budget.limits.max_entries:
                raise ArchiveRefused(f"more than {budget.limits.max_entries:,} entries")
            if len(parts) == 1 and member.name.lower().endswith(".csv") and not tops:
                stream = tar.extractfile(member) if member.isfile() else None
                tops[member.name] = stream.read(budget.limits.max_manifest_bytes + 1) if stream else None
    return names, tops


def _tar_manifest(content: bytes | None, limits: Limits) -> Manifest:
    if content is None:
        raise ArchiveRefused("the manifest is not a regular file")
    return _manifest_rows(io.BytesIO(content), limits)


def _tar_entry(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parts: tuple[str, ...],
    budget: Budget,
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
    if member.size > budget.limits.max_entry_bytes:  # declared: skipped unread (the stream still meters it)
        return Entry(name, skip=budget.too_large())
    stream = tar.extractfile(member)
    data = _read_capped(stream, budget.limits.max_entry_bytes) if stream else None
    if data is None:
        return Entry(name, skip=budget.too_large())
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


CIFAR_BATCH_BYTES = 64 * 2**20  # a real batch is 31 MB


def _cifar_entries(path: Path, kind: str, budget: Budget) -> Iterator[Entry]:
    """60,000 32x32 images as PNG entries; CIFAR's own test batch stays the test split.
    Batches come in the tarball's order (not theirs): a first pass finds the class names."""
    splits = dict(_CIFAR_BATCHES)
    try:
        names = [n.decode() for n in _cifar_meta(path, kind, budget)[b"label_names"]]
        with _tar_members(path, kind, budget) as (tar, members):
            for member in members:
                batch = member.name.removeprefix(f"{CIFAR_FOLDER}/")
                if batch in splits:
                    yield from _cifar_batch(batch, _unpickle(_cifar_read(tar, member)), names, splits[batch])
    except _TAR_ERRORS as exc:
        raise ArchiveRefused(f"damaged CIFAR-10 tarball ({exc})") from exc


def _cifar_meta(path: Path, kind: str, budget: Budget) -> dict[bytes, Any]:
    """batches.meta, having checked that every batch is there."""
    meta, seen = None, set()
    with _tar_members(path, kind, budget) as (tar, members):
        for member in members:
            name = member.name.removeprefix(f"{CIFAR_FOLDER}/")
            seen.add(name)
            if name == "batches.meta":
                meta = _unpickle(_cifar_read(tar, member))
    for name in ["batches.meta", *(batch for batch, _ in _CIFAR_BATCHES)]:
        if name not in seen:
            raise ArchiveRefused(f"CIFAR-10 tarball without {name}")
    assert meta is not None
    return meta


def _cifar_read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(member) if member.size <= CIFAR_BATCH_BYTES else None
    data = _read_capped(stream, CIFAR_BATCH_BYTES) if stream else None
    if data is None:
        raise ArchiveRefused(f"CIFAR-10 batch {member.name} is not a regular file or too large")
    return io.BytesIO(data)


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
