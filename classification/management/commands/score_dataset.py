"""`manage.py score_dataset DATASET [--model-version N] [--wait | --inline]`: a model's suggestion for every image."""

import json
from functools import partial
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from classification.models import ScoringRun
from classification.scoring.services import ScoringRefused, scoring_run, scoring_start
from datasets.selectors import dataset_find
from trainer.management.follow import carry_out
from trainer.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Score every image of a dataset (by name or id) with its live model (or --model-version): each gets "
        "the model's suggested class, its confidence, margin and entropy. Runs on a worker's `default` queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", help="dataset name or id")
        parser.add_argument("--model-version", type=int, default=None, help="score with this version (its id) instead")
        parser.add_argument("--wait", action="store_true", help="wait for the run to finish, showing progress")
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
        parser.add_argument("--inline", action="store_true", help="score in this process instead of on a worker")
        parser.add_argument("--json", action="store_true", help="print the run as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = dataset_find(options["dataset"])
        if dataset is None:
            raise CommandError(f"no dataset named or numbered {options['dataset']!r}")
        version = None
        if options["model_version"] is not None:
            version = ModelVersion.objects.filter(pk=options["model_version"]).first()
            if version is None:
                raise CommandError(f"no model version {options['model_version']}")
        try:
            run = scoring_start(dataset=dataset, version=version, enqueue=not options["inline"])
        except ScoringRefused as exc:
            raise CommandError(str(exc)) from exc
        carry_out(
            run, run_here=partial(scoring_run, run_id=run.pk) if options["inline"] else None,
            wait=options["wait"], name="scoring run", queue="default", timeout=options["timeout"],
            progress=lambda: f"run {run.pk}: {run.status} {run.processed}/{run.total or '?'}",
            out=None if options["json"] else self.stderr,
            queued=f"run {run.pk} queued; follow it with --wait or GET /api/v1/scoring-runs/{run.pk}/",
        )  # fmt: skip
        self._report(run, as_json=options["json"])
        if run.status == "failed":
            raise CommandError(f"scoring run {run.pk} failed: {run.error}")

    def _report(self, run: ScoringRun, *, as_json: bool) -> None:
        summary = {
            "run": run.pk,
            "dataset": run.dataset.name,
            "model_version": run.model_version_id,
            "status": run.status,
            "processed": run.processed,
            "total": run.total,
            "skipped": run.skipped,
            "error": run.error,
        }
        if as_json:
            self.stdout.write(json.dumps(summary))
            return
        self.stdout.write(
            f"Scoring run {run.pk} of {run.dataset.name} with {run.model_version.name}: {run.status}, "
            f"{run.processed - run.skipped} images scored, {run.skipped} skipped"
        )
