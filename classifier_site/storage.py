"""Local file storage for content-addressed media (images, thumbnails, models)."""

import os
import threading
from typing import Any

from django.core.files.storage import FileSystemStorage


class AtomicFileSystemStorage(FileSystemStorage):
    """Writes each file under a temporary name and renames it into place.

    A reader never sees half a file, and an interrupted write leaves no file under
    the real name. Names here are content hashes chosen by the site, so a name that
    exists already holds the same bytes and is simply replaced: no per-file lock,
    probe for a free name or chmod, which matters over the 60,000 files of an import.

    Model files and exports are also fsynced before the rename (and the folder
    after it), so a power cut cannot leave a served name pointing at lost bytes.
    Images skip that: an import is all or nothing and is simply run again.
    """

    durable_prefixes = ("models/", "exports/")

    def _save(self, name: str, content: Any) -> str:
        full_path = self.path(name)
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        partial = f"{full_path}.{os.getpid()}-{threading.get_ident()}.partial"
        try:
            with open(partial, "wb") as out:
                for chunk in content.chunks():
                    out.write(chunk)
                durable = name.startswith(self.durable_prefixes)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(partial, full_path)
            if durable:
                _fsync_folder(os.path.dirname(full_path))  # the rename itself
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        return name.replace("\\", "/")


def _fsync_folder(path: str) -> None:
    """Make a rename in `path` durable (POSIX: fsync the folder itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
