"""The local storage writes whole files or nothing, under the names the site chose."""

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from classifier_site.storage import AtomicFileSystemStorage


def test_default_storage_is_the_atomic_one():
    default_storage.exists("warm-up")  # resolve the lazy object
    assert isinstance(default_storage._wrapped, AtomicFileSystemStorage)


def test_same_name_is_replaced_not_renamed(settings):
    first = default_storage.save("datasets/1/ab/abc.png", ContentFile(b"one"))
    second = default_storage.save("datasets/1/ab/abc.png", ContentFile(b"two"))
    assert first == second == "datasets/1/ab/abc.png"
    assert default_storage.open(first).read() == b"two"
    assert [p.name for p in (settings.MEDIA_ROOT / "datasets/1/ab").iterdir()] == ["abc.png"]


def test_a_failed_write_leaves_nothing(settings):
    class Broken(ContentFile):
        def chunks(self, chunk_size=None):
            yield b"half a file"
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        default_storage.save("models/job-1/model.keras", Broken(b"x"))
    assert list((settings.MEDIA_ROOT / "models/job-1").iterdir()) == []
