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
