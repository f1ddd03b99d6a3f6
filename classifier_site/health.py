"""Readiness checks beyond those django-health-check ships."""

import dataclasses
import datetime

from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable


@dataclasses.dataclass
class Broker(HealthCheck):
    """The Celery broker accepts a connection (Redis, or the embedded SQLite broker)."""

    timeout = datetime.timedelta(seconds=3)

    def run(self) -> None:
        from classifier_site.celery import app

        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # kombu raises transport-specific errors
            raise ServiceUnavailable(f"broker unreachable: {type(exc).__name__}") from exc


@dataclasses.dataclass
class Reaper(HealthCheck):
    """The reaper (`manage.py reaper`) has finished a pass lately: dead jobs get re-queued."""

    def run(self) -> None:
        from trainer.jobs.reaper import reaper_silence  # an app's table: read late, as the checks run

        if why := reaper_silence():
            raise ServiceUnavailable(why)
