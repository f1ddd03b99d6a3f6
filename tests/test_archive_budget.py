"""Hostile archives against the import's budgets, built for real but small (issue 16, items 8 and 9).

Each case is the attack scaled down with the settings: a budget of a few MB against
tens of MB of zeros. What is asserted is what the budget object counted (every byte
any decompressor produced) and the memory the import held, not wall time.
"""

import io
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from classifier_site.runs import RunStatus
from datasets.archives import ArchiveRefused, open_source
from datasets.models import Dataset, Image
from datasets.services import dataset_create, import_limits, import_local_file
from tests.images import cifar_tarball, colour_image

pytestmark = pytest.mark.django_db

MB = 2**20


@pytest.fixture
def dataset() -> Dataset:
    return dataset_create(name="hostile")


def _tar(path: Path, entries: dict[str, bytes], mode: str = "w:gz") -> Path:
    fast = {"w:gz": {"compresslevel": 1}, "w:bz2": {"compresslevel": 1}}.get(mode, {})
    with tarfile.open(path, mode, **fast) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _deflated_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _drain(path: Path) -> int:
    """Read every entry the way an import does; the bytes the budget counted."""
    source = open_source(path, limits=import_limits())
    list(source.entries)
    return source.budget.decompressed


def _refused_after(path: Path) -> tuple[str, int]:
    source = open_source(path, limits=import_limits())
    with pytest.raises(ArchiveRefused) as refused:
        list(source.entries)
    return str(refused.value), source.budget.decompressed


def _read_bytes() -> int:
    # Bytes this process read through system calls, page cache included.
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# --- item 8: every decompressed byte counts ---------------------------------------------------


def test_a_tar_member_larger_than_the_budget_is_refused_at_its_header(dataset, tmp_path, settings):
    # The reported bomb: one huge member of zeros and two images, which imported "successfully".
    settings.IMPORT_MAX_EXPANDED_BYTES = 4_000_000
    entries = {
        "red/a.png": colour_image("red", 1),
        "red/zeros.png": bytes(40 * MB),
        "red/b.png": colour_image("red", 2),
    }
    path = _tar(tmp_path / "bomb.tar.gz", entries)
    assert path.stat().st_size < 200_000
    record = import_local_file(dataset=dataset, path=path)
    assert record.status == RunStatus.FAILED
    assert record.error == "expands to more than 4,000,000 bytes (stopped at red/zeros.png: zip bomb?)"
    assert not Image.objects.exists()
    message, counted = _refused_after(path)
    assert (
        message == record.error and counted < 64 * 1024
    )  # refused from the member's header, before its data was decompressed


def test_skipped_tar_members_count_against_the_budget(dataset, tmp_path, settings):
    # Members the importer never reads (ignored, nested archives) still cost their decompression.
    settings.IMPORT_MAX_EXPANDED_BYTES = 4_000_000
    entries = {"red/a.png": colour_image("red", 1), "red/b.png": colour_image("red", 2)}
    entries |= {f"__MACOSX/._pad{i}": bytes(MB) for i in range(6)} | {"red/inner.zip": bytes(MB)}
    path = _tar(tmp_path / "padded.tar.gz", entries)
    record = import_local_file(dataset=dataset, path=path)
    assert record.status == RunStatus.FAILED and record.error.startswith("expands to more than 4,000,000 bytes")
    counted = _refused_after(path)[1]
    assert counted <= 4_000_000  # stopped at the header that would take it over, not at the end


def test_a_cifar_tarball_counts_every_member(dataset, tmp_path, settings):
    # Looking a batch up by name scans the whole tarball: that scan is decompression too.
    settings.IMPORT_MAX_EXPANDED_BYTES = 4_000_000
    with tarfile.open(cifar_tarball(tmp_path / "real.tar.gz", per_batch=2)) as real:
        entries = {m.name: real.extractfile(m).read() for m in real.getmembers() if m.isfile()}
    padded = {"cifar-10-batches-py/batches.meta": entries.pop("cifar-10-batches-py/batches.meta")}
    padded |= {"cifar-10-batches-py/readme.html": bytes(20 * MB)} | entries  # padding before the batches
    path = _tar(tmp_path / "cifar-10-python.tar.gz", padded)
    record = import_local_file(dataset=dataset, path=path)
    assert record.status == RunStatus.FAILED and record.error.startswith("expands to more than 4,000,000 bytes")
    assert _refused_after(path)[1] < 64 * 1024


def test_zeros_named_zip_are_refused_from_a_bounded_prefix(dataset, tmp_path):
    path = tmp_path / "zeros.zip"
    with path.open("wb") as file:
        file.truncate(64 * MB)  # reads as 64 MB of zeros
    before = _read_bytes()
    with pytest.raises(ArchiveRefused, match=r"^not a zip or tar archive$"):
        open_source(path, limits=import_limits())
    assert _read_bytes() - before < MB
    assert import_local_file(dataset=dataset, path=path).error == "not a zip or tar archive"


# --- item 9: memory bounded by the settings -----------------------------------------------------


def test_a_zip_entry_over_the_image_limit_is_skipped_without_being_read(dataset, tmp_path, settings):
    settings.IMPORT_MAX_IMAGE_BYTES = MB
    ok = colour_image("red", 1)
    path = _deflated_zip(tmp_path / "big.zip", {"red/huge.png": bytes(20 * MB), "red/ok.png": ok})
    record = import_local_file(dataset=dataset, path=path)
    assert record.status == RunStatus.SUCCEEDED and record.report["imported"] == 1
    assert {s["file"]: s["reason"] for s in record.report["skipped"]} == {
        "red/huge.png": "larger than 1,048,576 bytes uncompressed"
    }
    assert _drain(path) == len(ok)  # the big entry was never decompressed


def test_import_memory_is_bounded_by_the_batch_setting_not_the_archive(dataset, tmp_path, settings):
    # The reported case was 40 entries of 64 MiB, up to 128 of them held at once.
    entry, count = 4 * MB, 16
    settings.IMPORT_BATCH_BYTES = 2 * entry
    settings.IMPORT_MAX_IMAGE_BYTES = 2 * entry
    entries = {f"red/{i}.png": bytes(entry) for i in range(count)} | {"red/ok.png": colour_image("red", 1)}
    path = _deflated_zip(tmp_path / "large-entries.zip", entries)
    assert path.stat().st_size < MB
    tracemalloc.start()
    try:
        record = import_local_file(dataset=dataset, path=path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert record.status == RunStatus.SUCCEEDED and record.report["imported"] == 1
    assert len(record.report["skipped"]) == count
    # The batch's bytes, one entry being read (its chunks and their join) and a few MB of
    # everything else, with an entry to spare; the archive holds 64 MB (68 MB peak before).
    assert peak < settings.IMPORT_BATCH_BYTES + 3 * entry + 4 * MB, f"peak {peak / MB:.1f} MB"


# --- formats found by their first bytes -------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_every_tar_compression_is_still_recognised(dataset, tmp_path, mode):
    entries = {"red/a.png": colour_image("red", 1), "blue/b.png": colour_image("blue", 2)}
    record = import_local_file(dataset=dataset, path=_tar(tmp_path / "any-name.bin", entries, mode))
    assert record.status == RunStatus.SUCCEEDED and record.format == "tar" and record.report["imported"] == 2


def test_compressed_data_that_is_not_a_tar_is_refused_without_reading_it(dataset, tmp_path):
    import gzip

    path = tmp_path / "zeros.tar.gz"
    path.write_bytes(gzip.compress(bytes(64 * MB), compresslevel=1))
    message = import_local_file(dataset=dataset, path=path).error
    assert message == "not a zip or tar archive"
