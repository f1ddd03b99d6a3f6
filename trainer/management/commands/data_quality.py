"""`manage.py data_quality DATASET [--backbone NAME] [--wait | --inline] [--json]`: analyse a
dataset's images (near-duplicates, label issues, outliers, small classes)."""

import json
from functools import partial
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets.selectors import dataset_find
from trainer.management.follow import carry_out
from trainer.models import QualityRun
from trainer.quality.selectors import duplicate_groups, leak_effect
from trainer.quality.services import QualityRefused, quality_run, quality_start


class Command(BaseCommand):
    help = (
        "Analyse every image of a dataset (by name or id) on a pretrained backbone's features: near-duplicate groups "
        "(leaks across splits, label conflicts), label issues by confident learning, outliers and small classes. "
        "Runs on a worker's `default` queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", help="dataset name or id")
        parser.add_argument("--backbone", default="", help="an installed backbone (default: the dataset's latest)")
        parser.add_argument("--wait", action="store_true", help="wait for the run to finish, showing progress")
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
        parser.add_argument("--inline", action="store_true", help="analyse in this process instead of on a worker")
        parser.add_argument("--json", action="store_true", help="print the findings as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = dataset_find(options["dataset"])
        if dataset is None:
            raise CommandError(f"no dataset named or numbered {options['dataset']!r}")
        try:
            run = quality_start(dataset=dataset, backbone=options["backbone"], enqueue=not options["inline"])
        except QualityRefused as exc:
            raise CommandError(str(exc)) from exc
        carry_out(
            run, run_here=partial(quality_run, run_id=run.pk) if options["inline"] else None,
            wait=options["wait"], name="quality run", queue="default", timeout=options["timeout"],
            progress=lambda: f"run {run.pk}: {run.status} {run.processed}/{run.total or '?'}",
            out=None if options["json"] else self.stderr,
            queued=f"run {run.pk} queued; follow it with --wait or GET /api/v1/quality-runs/{run.pk}/",
        )  # fmt: skip
        self._report(run, as_json=options["json"])
        if run.status == "failed":
            raise CommandError(f"quality run {run.pk} failed: {run.error}")

    def _report(self, run: QualityRun, *, as_json: bool) -> None:
        summary: dict[str, Any] = {"run": run.pk, "dataset": run.dataset.name, "status": run.status,
                                   "backbone": run.backbone, "images": run.processed, "skipped": run.skipped,
                                   "reused": run.reused}  # fmt: skip
        if run.status == "succeeded":
            groups = duplicate_groups(run)
            effect = leak_effect(run, groups)
            summary |= {
                "near_duplicate_groups": len(groups),
                "leaks": sum(g.leak for g in groups),
                "label_conflicts": sum(g.conflict for g in groups),
                "label_issues": run.report.get("label_issues", 0),
                "model_disagrees": run.report.get("disagreements", 0),
                "outliers": len(run.report.get("outliers", [])),
                "small_classes": [c["name"] for c in run.report.get("small_classes", [])],
                "test_accuracy": effect and {"with_leaks": effect.accuracy, "without": effect.accuracy_without},
            }
        if as_json:
            self.stdout.write(json.dumps(summary, indent=2))
            return
        for key, value in summary.items():
            self.stdout.write(f"{key}: {value}")
