"""`manage.py evaluate JOB [--dataset D]`: a fresh evaluation report of a job's model."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets.selectors import dataset_find
from trainer.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Evaluate a finished job's model on a dataset's test split (its own dataset by default, "
        "or --dataset, e.g. a newly imported test set) and store a new report. Runs here, not on a worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", type=int, help="training job id")
        parser.add_argument("--dataset", help="dataset name or id (default: the job's dataset)")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        from trainer.reports.services import EvaluationError, evaluation_run

        version = ModelVersion.objects.select_related("dataset").filter(job_id=options["job"]).first()
        if version is None:
            raise CommandError(f"job {options['job']} has no model (it does not exist or did not succeed)")
        dataset = dataset_find(options["dataset"]) if options["dataset"] else version.dataset
        if dataset is None:
            raise CommandError(f"no dataset named or numbered {options['dataset']!r}")
        try:
            evaluation = evaluation_run(version=version, dataset=dataset)
        except EvaluationError as exc:
            raise CommandError(str(exc)) from exc
        metrics = evaluation.metrics
        summary = {
            "evaluation": evaluation.pk,
            "model_version": version.pk,
            "dataset": dataset.name,
            "images": metrics["count"],
            "accuracy": metrics["accuracy"],
            "other_classes_left_out": metrics.get("other_classes_left_out", 0),
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        self.stdout.write(
            f"evaluation {evaluation.pk}: model v{version.pk} on {dataset.name}, {metrics['count']} test images, "
            f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_avg']['f1-score']:.4f}"
        )
        if summary["other_classes_left_out"]:
            self.stdout.write(f"left out {summary['other_classes_left_out']} images of classes the model does not know")
