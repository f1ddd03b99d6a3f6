"""The life of every background run (imports, training jobs, exports, scoring runs).

A run is a database row; the row is the truth, the broker only a doorbell. A view or
command creates the row and the task is published once the transaction commits; a
worker claims it with a compare-and-set UPDATE (queued -> running), so a duplicate
delivery does nothing; it finishes with another conditional UPDATE, so a run that
was cancelled, reaped or finished meanwhile keeps its ending. Each run type keeps
only what is its own (what it does, its progress fields, how it notices a dead
worker) and gets the rest from a `Lifecycle`.

Importing no app, it sits below datasets, trainer and classification alike.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task
from django.db import IntegrityError, models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from classifier_site.errors import Refused
from classifier_site.queueing import publish

logger = logging.getLogger(__name__)


class RunStatus(models.TextChoices):
    """Where a run is: the one status type of every background run."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
ERROR_LIMIT = 5000  # characters of an unexpected error kept on the row


class Counted:
    """For a run's model with `status`, `processed` and `total` (known once it starts)."""

    status: str
    processed: int
    total: int | None

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def progress(self) -> float | None:
        """0..1, or None while the total is unknown."""
        if self.status == RunStatus.SUCCEEDED:
            return 1.0
        return min(self.processed / self.total, 1.0) if self.total else None


def describe_error(exc: BaseException, *in_words: type[BaseException]) -> str:
    """What a failed run's row says: a refusal (or one of `in_words`) already speaks
    to people and is kept as is; anything else is named by its type, shortened."""
    if isinstance(exc, (Refused, *in_words)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]


def is_stale(*, status: str, last_sign_of_life: datetime | None, after: timedelta) -> bool:
    """Running, but silent for longer than any step takes: its worker died."""
    return status == RunStatus.RUNNING and last_sign_of_life is not None and timezone.now() - last_sign_of_life > after


@dataclass(frozen=True)
class Lifecycle:
    """Publish, claim and finish for the rows of one model.

    `task` returns the Celery task (imported late: tasks import the services that
    use this). `heartbeat` stamps `heartbeat_at` on claim for runs that keep one;
    `claim_fields` adds that run type's own columns to the claiming UPDATE;
    `on_finish` runs after a finish that took (a log line, removing files).
    """

    model: type[models.Model]
    task: Callable[[], Task]
    heartbeat: bool = False
    claim_fields: Callable[[], dict[str, Any]] = field(default=dict)
    on_finish: Callable[[int, str, dict[str, Any]], None] | None = None

    def rows(self, pk: int) -> QuerySet[Any]:
        return self.model._default_manager.filter(pk=pk)

    def publish_on_commit(self, pk: int) -> None:
        """Send the task once the row is visible to workers (never for a rolled-back row)."""
        transaction.on_commit(partial(self.publish, pk))

    def publish(self, pk: int) -> bool:
        """Send the task now; a broker that is down fails the run, saying so."""
        if error := publish(self.task(), pk):
            self.finish(pk, RunStatus.FAILED, error=error)
            return False
        return True

    def resend(self, pk: int) -> str | None:
        """Send the task again for a run put back in the queue (a re-queue, a hand-back):
        None when sent, else why not. Unlike `publish`, a broker that is down leaves the
        run queued, for the caller to send again later."""
        return publish(self.task(), pk)

    def start_one(
        self, scope: QuerySet[Any], create: Callable[[], Any], *, enqueue: bool, busy: str,
        refusal: Callable[[str], Exception],
    ) -> Any:  # fmt: skip
        """A new run from `create()` while none of `scope` (a dataset's runs) is active, else
        `refusal` saying `busy` and naming the active one; a partial unique index on the
        table settles two starts racing each other. An active run still queued is published
        again: its message may be lost, and a duplicate claims nothing."""
        active = scope.filter(status__in=ACTIVE).first()
        if active is not None:
            if active.status == RunStatus.QUEUED and enqueue:
                self.publish_on_commit(active.pk)
            raise refusal(f"{busy} (run {active.pk} is {active.status}).")
        try:
            with transaction.atomic():
                run = create()
        except IntegrityError:
            raise refusal(f"{busy}.") from None
        if enqueue:
            self.publish_on_commit(run.pk)
        return run

    def claim(self, pk: int, **fields: Any) -> bool:
        """Compare-and-set: only one worker ever moves a run from queued to running."""
        now = timezone.now()
        stamps: dict[str, Any] = {"started_at": now, **({"heartbeat_at": now} if self.heartbeat else {})}
        claimed = (
            self.rows(pk)
            .filter(status=RunStatus.QUEUED)
            .update(status=RunStatus.RUNNING, **stamps, **self.claim_fields(), **fields)
        )
        return bool(claimed)

    def running(self, pk: int) -> QuerySet[Any]:
        """The row while it is still running (a cancelled, reaped or deleted run is not)."""
        return self.rows(pk).filter(status=RunStatus.RUNNING)

    def finish(self, pk: int, status: str, *, only: QuerySet[Any] | None = None, **fields: Any) -> bool:
        """End an active run; False when it had ended already (or `only` excludes it)."""
        active = (only if only is not None else self.rows(pk)).filter(status__in=ACTIVE)
        finished = bool(active.update(status=status, finished_at=timezone.now(), **fields))
        if finished and self.on_finish is not None:
            self.on_finish(pk, status, fields)
        return finished

    def fail_stale(self, queryset: QuerySet[Any], *, after: timedelta, clock: str = "heartbeat_at") -> int:
        """Fail the running rows of `queryset` whose `clock` is older than `after`."""
        minutes = max(int(after.total_seconds() // 60), 1)
        stale = queryset.filter(status=RunStatus.RUNNING, **{f"{clock}__lt": timezone.now() - after})
        error = f"The worker stopped: no progress for over {minutes} minute{'s' if minutes > 1 else ''}."
        return stale.update(status=RunStatus.FAILED, error=error, finished_at=timezone.now())

    def requeue(self, pk: int, *, status: str, **fields: Any) -> bool:
        """Put a finished or dead run back in the queue (a retry) if it is still `status`;
        publish when it commits."""
        if not self.rows(pk).filter(status=status).update(status=RunStatus.QUEUED, finished_at=None, **fields):
            return False
        self.publish_on_commit(pk)
        return True
