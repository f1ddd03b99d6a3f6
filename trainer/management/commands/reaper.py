"""`manage.py reaper [--once] [--interval S]`: the reaper of dead and lost jobs (trainer.jobs.reaper)."""

import signal
import threading
from dataclasses import asdict
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Re-queue or fail training jobs whose worker died, and send again queue messages that were lost, "
        "every TRAIN_REAP_INTERVAL seconds until stopped (SIGTERM or Ctrl+C). Needs only the database: "
        "run one per deployment (the Procfile and docker-compose do)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, print what it did, and exit")
        parser.add_argument("--interval", type=float, help="seconds between passes (default TRAIN_REAP_INTERVAL)")

    def handle(self, *args: Any, **options: Any) -> None:
        from trainer.jobs.reaper import reap_forever, reaper_pass

        if options["once"]:
            self.stdout.write(str(asdict(reaper_pass())))
            return
        interval = options["interval"] or settings.TRAIN_REAP_INTERVAL
        stop = threading.Event()

        def stop_now(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, stop_now)
        signal.signal(signal.SIGINT, stop_now)
        self.stdout.write(f"reaper: a pass every {interval:g} s", ending="\n")
        self.stdout.flush()
        reap_forever(interval=interval, stop=stop)
