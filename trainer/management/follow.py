"""Following a queued row (a training job, a scoring run) from a command until it ends."""

import time
from collections.abc import Callable
from typing import Protocol

from django.core.management.base import CommandError, OutputWrapper


class Followed(Protocol):
    @property
    def pk(self) -> object: ...

    @property
    def status(self) -> str: ...

    @property
    def is_finished(self) -> bool: ...

    def refresh_from_db(self) -> None: ...


def follow(
    row: Followed,
    *,
    name: str,
    queue: str,
    progress: Callable[[], str],
    timeout: float | None,
    out: OutputWrapper | None,
) -> None:
    """Poll `row` every second, writing `progress()` to `out` when it changes (None: quiet);
    a CommandError past `timeout` seconds, and a hint when nothing takes it for 30 s."""
    started = time.monotonic()
    last, hinted = "", False
    while not row.is_finished:
        if timeout and time.monotonic() - started > timeout:
            raise CommandError(f"{name} {row.pk} still {row.status} after {timeout:g} s (is a worker running?)")
        if not hinted and row.status == "queued" and time.monotonic() - started > 30 and out is not None:
            out.write(f"still queued after 30 s: is a `{queue}` queue worker running? (make run starts one)")
            hinted = True
        time.sleep(1)
        row.refresh_from_db()
        line = progress()
        if line != last and out is not None:
            out.write(line)
            last = line


def carry_out(
    row: Followed,
    *,
    run_here: Callable[[], object] | None,
    wait: bool,
    name: str,
    queue: str,
    progress: Callable[[], str],
    timeout: float | None,
    out: OutputWrapper | None,
    queued: str = "",
) -> None:
    """What a command does with the row it queued: run it in this process (`run_here`,
    for --inline), follow it to its end (--wait), or write `queued` (how to follow it);
    the row is read again at the end."""
    if run_here is not None:
        run_here()
    elif wait:
        follow(row, name=name, queue=queue, progress=progress, timeout=timeout, out=out)
    elif queued and out is not None:
        out.write(queued)
    row.refresh_from_db()
