import json
import zipfile

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from datasets.models import Dataset, Image, Label
from datasets.services import dataset_create, dataset_import_zip
from tests.images import class_folder_zip, colour_image, write_zip


def _stored_files(settings) -> list:
    root = settings.MEDIA_ROOT / "datasets"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.django_db
def test_import_command_creates_dataset_with_classes(tmp_path, capsys):
    archive = class_folder_zip(tmp_path / "colours.zip", per_class=5)
    call_command("import_dataset", str(archive), "--name", "colours", "--json")
    report = json.loads(capsys.readouterr().out)
    dataset = Dataset.objects.get(name="colours")
    assert report["imported"] == 15
    assert report["per_class"] == {"red": 5, "green": 5, "blue": 5}
    assert sorted(Label.objects.filter(dataset=dataset).values_list("name", flat=True)) == ["blue", "green", "red"]
    image = Image.objects.filter(dataset=dataset).first()
    assert default_storage.exists(image.file.name)
    assert image.file.name.endswith(f"{image.sha256}.png")
    assert (image.width, image.height) == (16, 16)


@pytest.mark.django_db
def test_reimport_skips_duplicates(tmp_path):
    archive = class_folder_zip(tmp_path / "c.zip", per_class=3)
    dataset = dataset_create(name="d")
    first = dataset_import_zip(dataset=dataset, source=archive)
    second = dataset_import_zip(dataset=dataset, source=archive)
    assert (first.imported, second.imported, second.duplicates) == (9, 0, 9)
    assert Image.objects.filter(dataset=dataset).count() == 9


@pytest.mark.django_db
def test_bad_entries_are_skipped_with_reasons(tmp_path):
    good = colour_image("red", seed=1)
    archive = write_zip(
        tmp_path / "mixed.zip",
        {
            "red/ok.png": good,
            "red/fake.jpg": b"this is text, not a jpeg",
            "../evil/escape.png": colour_image("red", seed=2),
            "loose.png": colour_image("red", seed=3),
            "__MACOSX/red/._ok.png": b"resource fork",
            "red/.DS_Store": b"junk",
        },
    )
    report = dataset_import_zip(dataset=dataset_create(name="m"), source=archive)
    reasons = dict(report.skipped)
    assert report.imported == 1
    assert reasons == {
        "red/fake.jpg": "not an image",
        "../evil/escape.png": "path escapes archive",
        "loose.png": "not inside a class folder (expected class/image)",
    }


@pytest.mark.django_db
def test_non_zip_gives_a_clear_command_error(tmp_path):
    bogus = tmp_path / "data.zip"
    bogus.write_text("not a zip at all")
    with pytest.raises(CommandError, match="not a zip archive"):
        call_command("import_dataset", str(bogus), "--name", "x")
    assert not Dataset.objects.filter(name="x").exists()
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_dataset", str(tmp_path / "missing.zip"), "--name", "x")


@pytest.mark.django_db(transaction=True)
def test_failed_import_leaves_no_rows_and_no_files(tmp_path, settings, monkeypatch):
    archive = class_folder_zip(tmp_path / "c.zip", per_class=4)
    dataset = dataset_create(name="all-or-nothing")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Image.objects, "bulk_create", fail)
    with pytest.raises(RuntimeError):
        dataset_import_zip(dataset=dataset, source=archive)
    assert Image.objects.filter(dataset=dataset).count() == 0
    assert Label.objects.filter(dataset=dataset).count() == 0
    assert _stored_files(settings) == []
    monkeypatch.undo()  # a retry succeeds
    assert dataset_import_zip(dataset=dataset, source=archive).imported == 12


@pytest.mark.django_db
def test_oversized_entry_is_skipped_without_reading_it_all(tmp_path, monkeypatch):
    monkeypatch.setattr("datasets.services.MAX_ENTRY_BYTES", 1000)
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("red/bomb.png", b"\x00" * 5_000_000)
    report = dataset_import_zip(dataset=dataset_create(name="b"), source=path)
    assert report.imported == 0
    assert report.skipped == [("red/bomb.png", "larger than 1,000 bytes uncompressed")]
