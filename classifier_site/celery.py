"""The Celery application: settings come from Django's settings (CELERY_ prefix).

Queues: `default` for short work (imports), `gpu` for training. A GPU host runs
one worker per GPU on the `gpu` queue with concurrency 1.
"""

import os

from celery import Celery, signals
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")

app = Celery("classifier_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("gpu"))
app.autodiscover_tasks()


@signals.worker_init.connect
@signals.beat_init.connect
def _ensure_folders(**_: object) -> None:
    """The embedded broker's SQLite file and beat's schedule live in VAR_DIR."""
    from classifier_site.folders import ensure_folders

    ensure_folders()
