# Load the Celery app with Django so that `delay()` in web processes uses its settings.
from .celery import app as celery_app

__all__ = ("celery_app",)
