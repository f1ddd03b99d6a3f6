"""The Celery application: settings come from Django's settings (CELERY_ prefix).

Queues: `default` for short work (imports), `gpu` for training. A GPU host runs
one worker per GPU on the `gpu` queue with concurrency 1.
"""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")

app = Celery("classifier_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("gpu"))
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _ensure_folders(**_: object) -> None:
    """The embedded broker's SQLite file and beat's schedule live in VAR_DIR. A worker and
    beat finalize the app as they start, before beat opens its schedule (its own start-up
    signal comes after that); a web process does at its first task."""
    from classifier_site.folders import ensure_folders

    ensure_folders()
