"""Report data shaped for pages and the API: per-class rows, the confusion matrix
as table rows, and job comparisons. Plain reads of stored reports, no writes."""

from dataclasses import dataclass
from typing import Any

from trainer.models import Evaluation, TrainingJob

WORST_CLASSES = 3  # highlighted in the per-class table


@dataclass(frozen=True)
class ClassRow:
    index: int
    name: str
    precision: float
    recall: float
    f1: float
    support: int
    worst: bool


@dataclass(frozen=True)
class Cell:
    true_index: int
    predicted_index: int
    predicted_name: str
    count: int
    share: float  # of the true class's images (row-normalised)

    @property
    def diagonal(self) -> bool:
        return self.true_index == self.predicted_index

    @property
    def shade(self) -> int:
        """0-9, for a CSS class: how dark the cell is drawn."""
        return min(9, round(self.share * 9))


def class_rows(evaluation: Evaluation) -> list[ClassRow]:
    per_class = evaluation.metrics.get("per_class", {})
    rows = [
        ClassRow(i, name, row["precision"], row["recall"], row["f1-score"], row["support"], False)
        for i, name in enumerate(evaluation.classes)
        if (row := per_class.get(name))
    ]
    present = sorted((r for r in rows if r.support), key=lambda r: r.f1)
    worst = {r.index for r in present[:WORST_CLASSES]} if len(present) > WORST_CLASSES else set()
    return [ClassRow(**{**r.__dict__, "worst": r.index in worst}) for r in rows]


def confusion_rows(evaluation: Evaluation) -> list[tuple[str, list[Cell]]]:
    matrix = evaluation.metrics.get("confusion_matrix", [])
    rows = []
    for t, (name, counts) in enumerate(zip(evaluation.classes, matrix, strict=False)):
        total = sum(counts) or 1
        rows.append((name, [Cell(t, p, evaluation.classes[p], n, n / total) for p, n in enumerate(counts)]))
    return rows


HEADLINE = (
    ("accuracy", "accuracy", None),
    ("top-k accuracy", "top_k_accuracy", None),
    ("macro F1", "macro_avg", "f1-score"),
    ("weighted F1", "weighted_avg", "f1-score"),
    ("log loss", "log_loss", None),
    ("calibration error (ECE)", "expected_calibration_error", None),
)


def headline(metrics: dict[str, Any], key: str, sub: str | None) -> float | None:
    value = metrics.get(key)
    return (value or {}).get(sub) if sub else value


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(label, served model, without flip TTA) for the report's summary table."""
    plain = metrics.get("without_tta") or {}
    label_k = f"top-{metrics.get('top_k')} accuracy"
    return [
        (label_k if key == "top_k_accuracy" else label, headline(metrics, key, sub), headline(plain, key, sub))
        for label, key, sub in HEADLINE
        if headline(metrics, key, sub) is not None
    ]


def compare_jobs(jobs: list[TrainingJob]) -> dict[str, Any]:
    """Headline metrics side by side, per-class F1 with deltas against the first
    job, and the config fields whose values differ."""
    metrics = [job.model_version.metrics for job in jobs]
    side_by_side = [(label, [headline(m, key, sub) for m in metrics]) for label, key, sub in HEADLINE]
    names: list[str] = []
    for m in metrics:
        names += [n for n in m.get("per_class", {}) if n not in names]
    per_class = []
    for name in names:
        f1 = [(m.get("per_class", {}).get(name) or {}).get("f1-score") for m in metrics]
        deltas = [None if v is None or f1[0] is None else v - f1[0] for v in f1]
        per_class.append((name, list(zip(f1, deltas, strict=True))))
    keys = sorted({k for job in jobs for k in job.config})
    differences = [
        (k, [job.config.get(k) for job in jobs]) for k in keys if len({repr(job.config.get(k)) for job in jobs}) > 1
    ]
    return {"jobs": jobs, "headline": side_by_side, "per_class": per_class, "config": differences}
