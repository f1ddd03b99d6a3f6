import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trainer.management.commands.train import _find_dataset, _key_value
from trainer.management.follow import follow
from trainer.ml.config import ConfigError
from trainer.ml.sweep import METHODS, parse_space
from trainer.models import Sweep
from trainer.sweeps.selectors import sweep_trials
from trainer.sweeps.services import SweepRefused, sweep_start


class Command(BaseCommand):
    help = (
        "Start a sweep on a dataset: one training job per config of the space (a grid, or random samples), "
        "fanned out over the `gpu` workers, trials behind at a rung stopped early; or --show one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", nargs="?", help="dataset name or id")
        parser.add_argument("--param", action="append", default=[], metavar="FIELD=VALUES",
                            help="a varied config field: learning_rate=0.1,0.4 or 'weight_decay=1e-4..1e-2 log' "
                            "(ranges with --method random); repeatable")  # fmt: skip
        parser.add_argument("--set", dest="config_fields", metavar="FIELD=VALUE", type=_key_value, action="append",
                            default=[], help="a config field every trial shares, e.g. --set arch=resnet")  # fmt: skip
        parser.add_argument("--method", choices=METHODS, default="grid")
        parser.add_argument("--budget", type=int, default=8, help="the most trials (default 8)")
        parser.add_argument("--seed", type=int, default=0, help="which grid points or samples are drawn")
        parser.add_argument("--no-early-stopping", action="store_true", help="run every trial to its end")
        parser.add_argument("--eta", type=int, default=3, help="each rung keeps its top 1/eta (default 3)")
        parser.add_argument("--first-rung", type=int, default=1, help="the first rung's epoch (default 1)")
        parser.add_argument("--promote-best", action="store_true", help="promote the best trial's model at the end")
        parser.add_argument("--show", type=int, metavar="SWEEP", help="print an existing sweep and its trials")
        parser.add_argument("--wait", action="store_true", help="wait for the sweep to end, showing progress")
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
        parser.add_argument("--json", action="store_true", help="print the sweep as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        sweep = self._shown(options["show"]) if options["show"] else self._started(options)
        if options["wait"]:
            follow(sweep, name="sweep", queue="gpu", timeout=options["timeout"], progress=lambda: _progress(sweep),
                   out=None if options["json"] else self.stderr)  # fmt: skip
        sweep.refresh_from_db()
        self._report(sweep, as_json=options["json"])

    def _started(self, options: dict[str, Any]) -> Sweep:
        if not options["dataset"] or not options["param"]:
            raise CommandError("give a dataset and at least one --param FIELD=VALUES (or --show SWEEP)")
        try:
            space = parse_space(options["param"])
            return sweep_start(
                dataset=_find_dataset(options["dataset"]), space=space, base=dict(options["config_fields"]),
                method=options["method"], budget=options["budget"], seed=options["seed"],
                early_stopping=not options["no_early_stopping"], eta=options["eta"],
                first_rung=options["first_rung"], promote_best=options["promote_best"],
            )  # fmt: skip
        except (ConfigError, SweepRefused) as exc:
            raise CommandError(str(exc)) from exc

    def _shown(self, pk: int) -> Sweep:
        sweep = Sweep.objects.filter(pk=pk).first()
        if sweep is None:
            raise CommandError(f"no sweep {pk}")
        return sweep

    def _report(self, sweep: Sweep, *, as_json: bool) -> None:
        trials = sweep_trials(sweep)
        rows = [{"job": t.job.pk, **t.params, "status": "stopped early" if t.job.stopped_at_rung else t.job.status,
                 "epochs": t.job.epoch, "score": t.score, "best": t.is_best} for t in trials]  # fmt: skip
        if as_json:
            summary = {"sweep": sweep.pk, "status": sweep.status, "best_job": sweep.best_job_id,
                       "best_score": sweep.best_score, "outcome": sweep.outcome, "trials": rows}  # fmt: skip
            self.stdout.write(json.dumps(summary))
            return
        self.stdout.write(f"Sweep {sweep.pk}: {sweep.status}. {sweep.outcome}".rstrip())
        for row in rows:
            score = f"{row['score']:.3f}" if row["score"] is not None else "-"
            params = ", ".join(f"{k}={row[k]}" for k in sweep.space)
            mark = "  <- best" if row["best"] else ""
            said = f"{row['status']}, {row['epochs']} epochs, val {score}{mark}"
            self.stdout.write(f"  job {row['job']}: {params}: {said}")


def _progress(sweep: Sweep) -> str:
    statuses = [t.job.status for t in sweep_trials(sweep)]
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    return f"sweep {sweep.pk}: {sweep.status}; trials " + ", ".join(f"{n} {s}" for s, n in counts.items())
