"""The folders a process writes to (the SQLite database, the broker's file, media,
collected static files), created when a process starts: by manage.py, the WSGI
application and Celery's worker and beat, never by importing the settings."""

from pathlib import Path

from django.conf import settings


def ensure_folders() -> None:
    for folder in (settings.VAR_DIR, settings.STATIC_ROOT):
        Path(folder).mkdir(parents=True, exist_ok=True)
