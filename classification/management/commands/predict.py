"""`manage.py predict IMAGE... [--dataset D]`: a dataset's live model's answer per image file."""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from classification.predictor import NotServed, get_predictor
from datasets.imaging import ImageRejected
from datasets.selectors import dataset_find
from trainer.registry.files import NoModelAvailable


class Command(BaseCommand):
    help = "Classify image files with a dataset's live model version (the site's default without --dataset)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="+", help="image files")
        parser.add_argument("--dataset", default=None, help="dataset name or id whose live model answers")
        parser.add_argument("--top-k", type=int, default=3)
        parser.add_argument("--json", action="store_true", help="one JSON object per image")

    def handle(self, *args: Any, **options: Any) -> None:
        failures = 0
        for name in options["images"]:
            result = self._predict(Path(name), options["dataset"], options["top_k"])
            failures += "error" in result
            self.stdout.write(json.dumps(result) if options["json"] else _text(result))
        if failures:
            raise CommandError(f"{failures} of {len(options['images'])} images could not be classified")

    def _predict(self, path: Path, dataset: str | None, top_k: int) -> dict[str, Any]:
        try:
            prediction = get_predictor().predict(path.read_bytes(), dataset=dataset, top_k=top_k)
        except OSError as exc:
            return {"image": str(path), "error": f"cannot read file: {exc.strerror}"}
        except ImageRejected as exc:
            return {"image": str(path), "error": f"not a usable image: {exc}"}
        except NotServed as exc:
            if dataset_find(str(exc.dataset)) is None:
                raise CommandError(f"no dataset named or numbered {exc.dataset!r}") from exc
            raise CommandError(str(exc)) from exc
        except NoModelAvailable as exc:
            raise CommandError(str(exc)) from exc
        scores = [{"label": s.label, "probability": round(s.probability, 6)} for s in prediction.scores]
        return {
            "image": str(path),
            "dataset": prediction.version.dataset.name,
            "model_version": prediction.version.pk,
            "label": prediction.label,  # "unknown" below the version's rejection threshold
            "unknown": prediction.is_unknown,
            "predictions": scores,
        }


def _text(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['image']}: ERROR {result['error']}"
    best = ", ".join(f"{s['label']} {s['probability']:.1%}" for s in result["predictions"])
    verdict = "unknown: " if result["unknown"] else ""
    return f"{result['image']}: {verdict}{best} (model v{result['model_version']} of {result['dataset']})"
