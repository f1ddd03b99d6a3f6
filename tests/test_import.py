"""Importing real-world and hostile collections: formats, reasons, all-or-nothing, splits."""

import io
import json
import pickle
import zipfile
from collections import Counter

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from classifier_site.runs import RunStatus
from datasets.archives import Limits
from datasets.models import Dataset, Image, Label
from datasets.services import dataset_create, import_local_file
from tests.images import cifar_tarball, class_folder_zip, colour_image, encode, write_tar, write_zip

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset() -> Dataset:
    return dataset_create(name="imports")


def _import(dataset, path, **limits):
    record = import_local_file(dataset=dataset, path=path, limits=Limits(**limits))
    return record


def _files_under(root) -> list:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _reasons(record) -> dict[str, str]:
    return {s["file"]: s["reason"] for s in record.report["skipped"]}


# --- formats ---------------------------------------------------------------------------------------


def test_import_command_creates_dataset_with_classes(tmp_path, capsys):
    archive = class_folder_zip(tmp_path / "colours.zip", per_class=5)
    call_command("import_dataset", str(archive), "--name", "colours", "--json")
    report = json.loads(capsys.readouterr().out)
    dataset = Dataset.objects.get(name="colours")
    assert report["imported"] == 15 and report["format"] == "zip"
    assert report["per_class"] == {"blue": 5, "green": 5, "red": 5}
    assert sorted(Label.objects.filter(dataset=dataset).values_list("name", flat=True)) == ["blue", "green", "red"]
    image = Image.objects.filter(dataset=dataset).first()
    assert default_storage.exists(image.file.name) and image.thumbnail == image.file  # small: its own thumbnail
    assert image.file.name.endswith(f"{image.sha256}.png")
    assert (image.width, image.height) == (16, 16)


def test_tar_gz_with_predefined_splits_and_a_wrapping_folder(dataset, tmp_path):
    entries = {
        f"photos/{split}/{colour}/{i}.png": colour_image(colour, seed=i + 100 * (split == "test"))
        for split in ("train", "test") for colour in ("red", "blue") for i in range(6)
    }  # fmt: skip
    record = _import(dataset, write_tar(tmp_path / "d.tar.gz", entries))
    assert record.status == RunStatus.SUCCEEDED and record.format == "tar"
    assert record.report["per_class"] == {"blue": 12, "red": 12}  # "photos/" is only a wrapper
    images = Image.objects.filter(dataset=dataset)
    assert set(images.filter(original_name__contains="/test/").values_list("split", flat=True)) == {"test"}
    assert set(images.filter(original_name__contains="/train/").values_list("split", flat=True)) <= {"train", "val"}


def test_a_hostile_entry_does_not_hide_the_wrapping_folder(dataset, tmp_path):
    entries = {
        f"pets/{c}/{i}.png": colour_image("red" if c == "cat" else "blue", seed=i)
        for c in ("cat", "dog")
        for i in range(3)
    }
    entries["../evil.png"] = colour_image("green", seed=1)
    record = _import(dataset, write_zip(tmp_path / "w.zip", entries))
    assert record.report["per_class"] == {"cat": 3, "dog": 3}
    assert _reasons(record) == {"../evil.png": "path escapes archive"}


def test_zip_of_unlabelled_images(dataset, tmp_path):
    archive = write_zip(tmp_path / "u.zip", {f"img{i}.png": colour_image("red", seed=i) for i in range(4)})
    record = _import(dataset, archive)
    assert record.report["per_class"] == {"(unlabelled)": 4}
    assert Image.objects.filter(dataset=dataset, label__isnull=True).count() == 4


def test_csv_manifest_sets_labels_and_splits(dataset, tmp_path):
    manifest = "filename,label,split\nimages/a.png,cat,test\nimages/b.png,dog,\nimages/gone.png,dog,train\n"
    archive = write_zip(tmp_path / "m.zip", {
        "labels.csv": manifest.encode(), "images/a.png": colour_image("red", 1),
        "images/b.png": colour_image("blue", 2), "images/extra.png": colour_image("green", 3),
    })  # fmt: skip
    record = _import(dataset, archive)
    assert record.format == "zip + CSV manifest"
    assert record.report["per_class"] == {"cat": 1, "dog": 1}
    assert Image.objects.get(label__name="cat").split == "test"
    assert _reasons(record) == {
        "images/extra.png": "not listed in the manifest",
        "images/gone.png": "listed in the manifest but not in the archive",
    }


def test_csv_manifest_in_a_tar_gz(dataset, tmp_path):
    manifest = b"filename,label\na.png,cat\nb.png,\n"
    entries = {"m.csv": manifest, "a.png": colour_image("red", 1), "b.png": colour_image("blue", 2)}
    record = _import(dataset, write_tar(tmp_path / "m.tar.gz", entries))
    assert record.report["per_class"] == {"(unlabelled)": 1, "cat": 1}


def test_manifest_with_an_unknown_split_refuses_the_import(dataset, tmp_path):
    archive = write_zip(tmp_path / "m.zip", {"m.csv": b"filename,label,split\na.png,cat,holdout\n"})
    record = _import(dataset, archive)
    assert record.status == RunStatus.FAILED and "unknown split 'holdout'" in record.error


def test_cifar10_tarball_keeps_its_train_test_split(dataset, tmp_path):
    record = _import(dataset, cifar_tarball(tmp_path / "cifar-10-python.tar.gz", per_batch=4))
    assert record.status == RunStatus.SUCCEEDED, record.error
    assert record.format == "CIFAR-10 python tarball" and record.report["imported"] == 24
    from_test = Image.objects.filter(dataset=dataset, original_name__startswith="test_batch")
    assert set(from_test.values_list("split", flat=True)) == {"test"} and from_test.count() == 4
    assert Image.objects.filter(dataset=dataset, split="test").count() == 4  # train batches never become test
    assert set(Label.objects.filter(dataset=dataset).values_list("name", flat=True)) <= {
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}  # fmt: skip
    assert Image.objects.filter(dataset=dataset).first().width == 32


def test_cifar_batch_that_unpickles_code_is_refused(dataset, tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = {"cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": [Exploit()]}, protocol=2)}
    record = _import(dataset, write_tar(tmp_path / "evil.tar.gz", evil))
    assert record.status == RunStatus.FAILED
    # Protocol 2 names Python 3 builtins by their Python 2 module.
    assert record.error == "CIFAR batch contains a forbidden object (__builtin__.print)"


def test_reimport_skips_duplicates(dataset, tmp_path):
    archive = class_folder_zip(tmp_path / "c.zip", per_class=3)
    first, second = _import(dataset, archive), _import(dataset, archive)
    assert (first.report["imported"], second.report["imported"], second.report["duplicates"]) == (9, 0, 9)
    assert Image.objects.filter(dataset=dataset).count() == 9


# --- hostile and broken input -------------------------------------------------------------------


def test_bad_files_are_skipped_with_reasons_a_person_understands(dataset, tmp_path, settings):
    settings.MAX_IMAGE_PIXELS = 1_000_000
    jpeg = colour_image("red", seed=5, size=64, fmt="JPEG")
    gif = encode(np.full((8, 8, 3), 200, np.uint8), "GIF")
    polyglot = colour_image("red", seed=6) + b"<html><script>alert(document.cookie)</script></html>"
    archive = write_zip(tmp_path / "bad.zip", {
        "red/truncated.jpg": jpeg[: len(jpeg) // 2],
        "red/random.jpg": bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)),
        "red/png-named.jpg": colour_image("red", seed=7),
        "red/gif-named.jpg": gif,
        "red/bomb.png": encode(np.zeros((2000, 2000), np.uint8)),
        "red/drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>',
        "red/polyglot.png": polyglot,
        "red/inner.zip": b"PK\x05\x06" + b"\x00" * 18,
        "__MACOSX/red/._png-named.jpg": b"resource fork",
        "red/.DS_Store": b"junk",
        "red/Thumbs.db": b"junk",
    })  # fmt: skip
    record = _import(dataset, archive)
    # The PNG and the GIF, by their real formats, and the PNG with HTML after its end:
    # stored as .png and served as image/png with nosniff, no browser renders that HTML.
    assert record.report["imported"] == 3
    assert {name.rpartition(".")[2] for name in Image.objects.values_list("file", flat=True)} == {"png", "gif"}
    assert Image.objects.filter(original_name="red/polyglot.png").exists()
    assert _reasons(record) == {
        "red/truncated.jpg": "corrupt or truncated JPEG file",
        "red/random.jpg": "not an image",
        "red/bomb.png": "exceeds 1 megapixels",
        "red/drawing.svg": "SVG is not supported: send a PNG, JPEG, GIF, BMP, WebP or TIFF image",
        "red/inner.zip": "nested archive (extract it and upload its contents)",
    }


def test_paths_that_escape_links_and_encrypted_entries_are_skipped(dataset, tmp_path, settings):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("../escape.png", "/etc/absolute.png", "red\\..\\..\\win.png", "C:/drive.png"):
            info = zipfile.ZipInfo("x")
            info.filename = name  # as a hostile tool writes it, unnormalised
            archive.writestr(info, colour_image("red", seed=len(name)))
        link = zipfile.ZipInfo("red/link.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, b"/etc/passwd")
        archive.writestr("red/locked.png", b"\x00" * 64)
        archive.writestr("red/fine.png", colour_image("red", seed=99))
    raw = bytearray(path.read_bytes())  # zipfile cannot encrypt: set the flag as an encrypting tool would
    local_name, central_name = raw.index(b"red/locked.png"), raw.rindex(b"red/locked.png")
    raw[raw.rindex(b"PK\x03\x04", 0, local_name) + 6] |= 0x1  # local header's flag bits
    raw[raw.rindex(b"PK\x01\x02", 0, central_name) + 8] |= 0x1  # central directory's
    path.write_bytes(bytes(raw))
    record = _import(dataset, path)
    assert record.report["imported"] == 1
    reasons = _reasons(record)
    assert {reasons[n] for n in ("../escape.png", "/etc/absolute.png", "red\\..\\..\\win.png", "C:/drive.png")} == {
        "path escapes archive"}  # fmt: skip
    assert (reasons["red/link.png"], reasons["red/locked.png"]) == ("symbolic link", "encrypted entry")
    media = settings.MEDIA_ROOT
    assert all(media in p.parents for p in _files_under(tmp_path) if p.suffix == ".png" and p != path)


def test_tar_links_and_escapes_are_skipped(dataset, tmp_path):
    import tarfile

    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind in (("red/link.png", tarfile.SYMTYPE), ("red/hard.png", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            tar.addfile(info)
        data = colour_image("red", seed=1)
        for name in ("../../escape.png", "red/ok.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    record = _import(dataset, path)
    assert record.report["imported"] == 1
    assert _reasons(record) == {"red/link.png": "symbolic link", "red/hard.png": "hard link",
                                "../../escape.png": "path escapes archive"}  # fmt: skip


def test_zip_bomb_is_stopped_by_the_decompressed_byte_budget(dataset, tmp_path, settings):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("red/ok.png", colour_image("red", seed=1))
        for i in range(3):
            archive.writestr(f"red/bomb{i}.png", b"\x00" * 600_000)  # 600 KB each, 600 bytes compressed
    assert path.stat().st_size < 10_000
    record = _import(dataset, path, max_total_bytes=1_000_000)
    assert record.status == RunStatus.FAILED
    assert record.error.startswith("expands to more than 1,000,000 bytes")
    assert not Image.objects.exists() and _files_under(settings.MEDIA_ROOT) == []


def test_too_many_entries_and_oversized_entries(dataset, tmp_path):
    many = write_zip(tmp_path / "many.zip", {f"red/{i}.png": colour_image("red", seed=i) for i in range(6)})
    assert _import(dataset, many, max_entries=5).error == "more than 5 entries"
    big = write_zip(tmp_path / "big.zip", {"red/huge.png": b"\x00" * 5000, "red/ok.png": colour_image("red", 1)})
    record = _import(dataset, big, max_entry_bytes=1000)
    assert _reasons(record) == {"red/huge.png": "larger than 1,000 bytes uncompressed"}


def test_overlapping_entries_zip_bomb_is_refused(dataset, tmp_path):
    path = write_zip(tmp_path / "o.zip", {"red/a.png": colour_image("red", 1), "red/b.png": colour_image("red", 2)})
    raw = bytearray(path.read_bytes())
    second = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)  # central entry of b.png
    raw[second + 42 : second + 46] = (0).to_bytes(4, "little")  # ...now points at a.png's bytes
    path.write_bytes(bytes(raw))
    record = _import(dataset, path)
    assert record.status == RunStatus.FAILED and record.error == "overlapping zip entries (zip bomb)"


def test_not_an_archive_and_a_damaged_one(dataset, tmp_path):
    text = tmp_path / "data.zip"
    text.write_text("not a zip at all")
    assert _import(dataset, text).error == "not a zip or tar archive"
    cut = class_folder_zip(tmp_path / "c.zip", per_class=3)
    cut.write_bytes(cut.read_bytes()[:-30])  # end of central directory cut off
    assert _import(dataset, cut).status == RunStatus.FAILED


def test_non_zip_gives_a_clear_command_error(tmp_path):
    bogus = tmp_path / "data.zip"
    bogus.write_text("not a zip at all")
    with pytest.raises(CommandError, match="not a zip or tar archive"):
        call_command("import_dataset", str(bogus), "--name", "x")
    assert not Dataset.objects.filter(name="x").exists()
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_dataset", str(tmp_path / "missing.zip"), "--name", "x")


@pytest.mark.django_db(transaction=True)
def test_failed_import_leaves_no_rows_and_no_files_and_can_be_retried(tmp_path, settings, monkeypatch):
    archive = class_folder_zip(tmp_path / "c.zip", per_class=4)
    dataset = dataset_create(name="all-or-nothing")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("datasets.services._ImageWriter.finish", disk_full)
    record = _import(dataset, archive)
    assert record.status == RunStatus.FAILED and "No space left on device" in record.error
    assert Image.objects.filter(dataset=dataset).count() == 0
    assert Label.objects.filter(dataset=dataset).count() == 0
    assert _files_under(settings.MEDIA_ROOT / "datasets") == []
    monkeypatch.undo()
    assert _import(dataset, archive).report["imported"] == 12


def test_class_names_with_markup_are_stored_as_text(dataset, tmp_path):
    archive = write_zip(tmp_path / "x.zip", {"<img src=x onerror=alert(1)> & co/a.png": colour_image("red", 1)})
    _import(dataset, archive)
    assert Label.objects.get(dataset=dataset).name == "<img src=x onerror=alert(1)> & co"


# --- splits ---------------------------------------------------------------------------------------


def test_splits_are_stratified_seeded_and_never_move(tmp_path):
    dataset = Dataset.objects.create(name="s", val_fraction=0.2, test_fraction=0.1, split_seed=7)
    items = {f"{c}/{i}.png": colour_image(c, seed=i) for c in ("red", "blue") for i in range(50)}
    _import(dataset, write_zip(tmp_path / "a.zip", items))
    per_class = Counter(Image.objects.filter(dataset=dataset).values_list("label__name", "split"))
    assert per_class == {("red", "train"): 35, ("red", "val"): 10, ("red", "test"): 5,
                         ("blue", "train"): 35, ("blue", "val"): 10, ("blue", "test"): 5}  # fmt: skip
    before = dict(Image.objects.filter(dataset=dataset).values_list("sha256", "split"))
    more = {f"red/more{i}.png": colour_image("red", seed=1000 + i) for i in range(50)}
    _import(dataset, write_zip(tmp_path / "b.zip", more))
    after = dict(Image.objects.filter(dataset=dataset).values_list("sha256", "split"))
    assert all(after[sha] == split for sha, split in before.items())  # old images keep their split
    red = Counter(Image.objects.filter(dataset=dataset, label__name="red").values_list("split", flat=True))
    assert red == {"train": 70, "val": 20, "test": 10}


def test_same_seed_same_splits(tmp_path):
    archive = write_zip(tmp_path / "a.zip", {f"red/{i}.png": colour_image("red", seed=i) for i in range(30)})
    splits = []
    for name in ("one", "two"):
        dataset = Dataset.objects.create(name=name, split_seed=3)
        _import(dataset, archive)
        splits.append(sorted(Image.objects.filter(dataset=dataset).values_list("sha256", "split")))
    assert splits[0] == splits[1]


@pytest.mark.django_db
def test_more_files_than_django_parses_is_a_json_413(admin_user, settings):
    from rest_framework.test import APIClient

    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3  # 100 by default
    dataset = dataset_create(name="many")
    api = APIClient()
    api.force_authenticate(admin_user)
    files = [SimpleUploadedFile(f"{n}.png", colour_image("red", seed=n)) for n in range(5)]
    response = api.post("/api/v1/imports/", {"dataset": dataset.pk, "files": files}, format="multipart")
    assert response.status_code == 413 and response.json() == {"detail": "Too many files: at most 3 per request."}
    assert not dataset.imports.exists()
