import argparse
import json
from functools import partial
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets.models import Dataset
from datasets.selectors import dataset_find
from trainer.jobs.services import TrainingRefused, training_job_run, training_job_start
from trainer.management.follow import carry_out
from trainer.ml.config import ARCHITECTURES, ConfigError, TrainConfig
from trainer.models import TrainingJob

_CONFIG_OPTIONS = ("arch", "epochs", "batch_size", "learning_rate", "image_size", "seed")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), value.strip()


class Command(BaseCommand):
    help = (
        "Start a training job on a dataset (by name or id); it runs on a worker's `gpu` queue. "
        "Options not given take the architecture's defaults."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", help="dataset name or id")
        # Not argparse choices: backbone files installed here are architectures too (the config checks).
        parser.add_argument("--arch", help=f"default auto; any of {', '.join(ARCHITECTURES)} or an installed backbone")
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--batch-size", type=int)
        parser.add_argument("--learning-rate", type=float)
        parser.add_argument("--image-size", type=int)
        parser.add_argument("--seed", type=int)
        parser.add_argument(
            "--set",
            dest="config_fields",
            metavar="FIELD=VALUE",
            type=_key_value,
            action="append",
            default=[],
            help="any other config field, e.g. --set label_smoothing=0.1 --set flip=off (repeatable)",
        )
        parser.add_argument("--wait", action="store_true", help="wait for the job to finish, showing progress")
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
        parser.add_argument("--inline", action="store_true", help="train in this process instead of on a worker")
        parser.add_argument("--json", action="store_true", help="print the job as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = _find_dataset(options["dataset"])
        try:
            given = dict(options["config_fields"])
            given.update({k: options[k] for k in _CONFIG_OPTIONS if options[k] is not None})
            config = TrainConfig.from_dict(given)
        except ConfigError as exc:
            raise CommandError(str(exc)) from exc
        try:
            job = training_job_start(dataset=dataset, config=config, enqueue=not options["inline"])
        except TrainingRefused as exc:
            raise CommandError(str(exc)) from exc
        carry_out(
            job, run_here=partial(training_job_run, job_id=job.pk) if options["inline"] else None,
            wait=options["wait"], name="job", queue="gpu", timeout=options["timeout"],
            progress=lambda: f"job {job.pk}: {job.status}, {job.phase_text} ({job.progress:.0%})",
            out=None if options["json"] else self.stderr,
        )  # fmt: skip
        self._report(job, as_json=options["json"])
        if job.status == "failed":
            raise CommandError(f"job {job.pk} failed: {job.error}")

    def _report(self, job: TrainingJob, *, as_json: bool) -> None:
        version = getattr(job, "model_version", None)
        summary = {
            "job": job.pk,
            "status": job.status,
            "error": job.error,
            "model_version": version.pk if version else None,
            "accuracy": version.accuracy if version else None,
            "arch": job.config.get("arch"),
            "recipe": job.recipe,
            "kept": (job.transfer_outcome or {}).get("kept"),
            "seconds": (job.finished_at - job.created_at).total_seconds() if job.finished_at else None,
        }
        if as_json:
            self.stdout.write(json.dumps(summary))
            return
        self.stdout.write(f"Job {job.pk}: {job.status}")
        if job.recipe:
            self.stdout.write(f"auto chose {job.recipe}")
        if version:
            self.stdout.write(f"Model version {version.pk}, accuracy {version.accuracy:.4f} on its test split")


def _find_dataset(ref: str) -> Dataset:
    dataset = dataset_find(ref)
    if dataset is None:
        raise CommandError(f"no dataset named or numbered {ref!r}")
    return dataset
