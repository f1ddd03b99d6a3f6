"""The reaper: its own process (`manage.py reaper`) that needs only the database.

Every TRAIN_REAP_INTERVAL seconds it re-queues or fails training jobs whose worker died
and sends again the messages that were lost or could not be sent, then stamps its pass
(`ReaperPass`), which /readyz reads. It used to be a beat schedule, whose every tick went
through the broker: a broker outage stopped it, and beat never recovered. Here a broker
that is down only delays messages, and a database that is down delays the next pass.
Running two reapers is safe (every change is a compare-and-set), only wasteful.
"""

import logging
import socket
import threading
from dataclasses import asdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from datasets.services import imports_reap
from trainer.jobs.services import Reaped, training_jobs_reap
from trainer.models import ReaperPass
from trainer.sweeps.trials import sweeps_settle_all

logger = logging.getLogger(__name__)


def reaper_pass() -> Reaped:
    """One pass; its stamp is written after it, so a pass that fails leaves the old one.
    Imports whose worker died are its business too (`imports_reap`), reported under "imports",
    and sweeps whose last trial ended without settling them ("sweeps")."""
    reaped = training_jobs_reap()
    imports = imports_reap()
    sweeps = sweeps_settle_all()
    if imports.requeued or imports.failed or imports.files_removed:
        logger.warning("reaper: imports %s", asdict(imports))
    summary = {**asdict(reaped), "imports": asdict(imports), "sweeps_settled": sweeps}
    ReaperPass.objects.update_or_create(
        pk=1, defaults={"host": socket.gethostname()[:200], "finished_at": timezone.now(), "summary": summary}
    )
    return reaped


def reap_forever(*, interval: float, stop: threading.Event) -> None:
    """Pass after pass until `stop` is set; an unreachable database is logged and tried again."""
    while not stop.is_set():
        try:
            reaped = reaper_pass()
        except DatabaseError:
            logger.exception("reaper: the database is unreachable; trying again in %.0f s", interval)
            connections.close_all()  # the next pass opens a fresh connection
        else:
            if reaped.requeued or reaped.failed or reaped.cancelled or reaped.republished:
                logger.warning("reaper: %s", asdict(reaped))
        stop.wait(interval)


def reaper_last_pass() -> datetime | None:
    return ReaperPass.objects.filter(pk=1).values_list("finished_at", flat=True).first()


def reaper_silence() -> str:
    """Why /readyz should fail because of the reaper, or "" when it runs."""
    last = reaper_last_pass()
    if last is None:
        return "the reaper has never run: start `manage.py reaper` (the Procfile and compose do)"
    silent = timezone.now() - last
    if silent > timedelta(seconds=settings.REAPER_STALE_SECONDS):
        return f"the reaper's last pass was {silent.total_seconds():.0f} s ago: is `manage.py reaper` running?"
    return ""
