"""Reads of learning from production: the drift panel compares what the live model saw
(its kept answers, weighted back to every answer) with its test split, day by day: the
mean confidence, the share below the threshold, and the mix of predicted classes."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

from django.db.models import F, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from classification.models import LiveCapture, LivePrediction
from datasets.models import Dataset
from trainer.models import Evaluation
from trainer.registry.selectors import model_version_serving

DAYS = 30


@dataclass
class Period:
    """The live answers of a day (or of the test split): weighted counts."""

    day: date | None
    answers: float = 0.0
    confidence_sum: float = 0.0
    unknown: float = 0.0
    mix: dict[str, float] = field(default_factory=dict)  # class -> weighted answers

    @property
    def confidence(self) -> float | None:
        return self.confidence_sum / self.answers if self.answers else None

    @property
    def unknown_share(self) -> float | None:
        return self.unknown / self.answers if self.answers else None

    def share(self, label: str) -> float:
        return self.mix.get(label, 0.0) / self.answers if self.answers else 0.0


@dataclass(frozen=True)
class Drift:
    capture: LiveCapture | None
    days: list[Period]  # newest first, days with answers only
    test: Period | None  # the live version's latest test evaluation
    classes: list[str]
    kept: int  # answers kept in all
    waiting: int  # their images still unlabelled in the dataset

    @property
    def table(self) -> list[tuple[str, Period, list[float]]]:
        """(name, period, share of each class) rows: the test split first, then the days."""
        named = [("test split", self.test)] if self.test else []
        named += [(p.day.isoformat() if p.day else "", p) for p in self.days]
        return [(name, period, [period.share(c) for c in self.classes]) for name, period in named]

    @property
    def chart(self) -> dict[str, object]:
        """The drift panel's charts' data (static/js/drift-chart.js), oldest day first: mean
        confidence and unknown share per day against the test split's, and the class mix."""
        days = list(reversed(self.days))
        return {
            "days": [p.day.isoformat() if p.day else "" for p in days],
            "confidence": [_rounded(p.confidence) for p in days],
            "unknown": [_rounded(p.unknown_share) for p in days],
            "mix": {c: [_rounded(p.share(c)) for p in days] for c in self.classes},
            "test": self.test and self._test_chart(self.test),
        }

    def _test_chart(self, test: Period) -> dict[str, object]:
        mix = {c: _rounded(test.share(c)) for c in self.classes}
        return {"confidence": _rounded(test.confidence), "unknown": _rounded(test.unknown_share), "mix": mix}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def drift(*, dataset: Dataset, days: int = DAYS) -> Drift:
    since = timezone.now() - timedelta(days=days)
    rows = (
        LivePrediction.objects.filter(dataset=dataset, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day", "label", "unknown")
        .annotate(answers=Sum("weight"), weighted_confidence=Sum(F("weight") * F("confidence")))
    )
    periods: dict[date, Period] = defaultdict(lambda: Period(None))
    for row in rows:
        period = periods[row["day"]]
        period.day = row["day"]
        _add(period, row["label"], row["answers"], row["weighted_confidence"], row["unknown"])
    test = _test_period(dataset)
    labels = {label for p in periods.values() for label in p.mix} | set(test.mix if test else {})
    kept, waiting = capture_counts(dataset=dataset)
    return Drift(
        capture=LiveCapture.objects.filter(dataset=dataset).first(),
        days=sorted(periods.values(), key=lambda p: p.day or date.min, reverse=True),
        test=test,
        classes=sorted(labels),
        kept=kept,
        waiting=waiting,
    )


def capture_counts(*, dataset: Dataset) -> tuple[int, int]:
    """(answers kept in all, their images still unlabelled in the dataset)."""
    return LivePrediction.objects.filter(dataset=dataset).count(), waiting_for_label(dataset.pk).count()


def waiting_for_label(dataset_id: int) -> QuerySet[LivePrediction]:
    """The kept answers whose image is still in the dataset, unlabelled."""
    return LivePrediction.objects.filter(dataset_id=dataset_id, image__isnull=False, image__label__isnull=True)


def _add(period: Period, label: str, weight: float, weighted_confidence: float, unknown: bool) -> None:
    period.answers += weight
    period.confidence_sum += weighted_confidence
    period.unknown += weight if unknown else 0.0
    period.mix[label] = period.mix.get(label, 0.0) + weight


def _test_period(dataset: Dataset) -> Period | None:
    version = model_version_serving(dataset_id=dataset.pk)
    evaluation = Evaluation.objects.filter(model_version=version, split="test").first() if version else None
    if evaluation is None:
        return None
    test = Period(None)
    threshold = version.rejection_threshold if version else 0.0
    for predicted, confidence in evaluation.predictions.values_list("predicted_index", "confidence"):
        _add(test, str(evaluation.classes[predicted]), 1.0, confidence, confidence < threshold)
    return test
