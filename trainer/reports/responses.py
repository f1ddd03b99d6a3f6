"""Report downloads shared by the report pages and the API: the chart PNGs, the JSON
document and the CSV of every prediction (streamed)."""

import csv
from typing import Any

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, StreamingHttpResponse

from trainer.models import Evaluation

CHARTS = {
    "confusion": "confusion_png",
    "confusion-normalized": "confusion_normalized_png",
    "reliability": "reliability_png",
}


def chart_response(evaluation: Evaluation, name: str) -> FileResponse:
    field = CHARTS.get(name)
    stored = getattr(evaluation, field).name if field else ""
    if not stored:
        raise Http404("No such chart.")
    response = FileResponse(default_storage.open(stored), content_type="image/png")
    response["Cache-Control"] = "private, max-age=86400"  # a report's pictures never change
    return response


def report_document(evaluation: Evaluation) -> dict[str, Any]:
    """The downloadable report: what it is of, and every metric."""
    version = evaluation.model_version
    return {
        "evaluation": evaluation.pk,
        "model_version": version.pk,
        "job": version.job_id,
        "dataset": evaluation.dataset.name,
        "split": evaluation.split,
        "created_at": evaluation.created_at.isoformat(),
        "classes": evaluation.classes,
        "metrics": evaluation.metrics,
    }


class _Echo:
    def write(self, value: str) -> str:
        return value


def predictions_csv_response(evaluation: Evaluation) -> StreamingHttpResponse:
    """Every evaluated image with its true and predicted class and all probabilities, streamed."""
    writer = csv.writer(_Echo())
    header = ["image_id", "file_name", "true_class", "predicted_class", "correct", "confidence"]
    header += [f"p_{name}" for name in evaluation.classes]

    def rows() -> Any:
        yield writer.writerow(header)
        predictions = evaluation.predictions.select_related("image").order_by("id")
        for p in predictions.iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    p.image_id or "",
                    p.image.original_name if p.image else "",
                    evaluation.classes[p.true_index],
                    evaluation.classes[p.predicted_index],
                    int(p.is_correct),
                    f"{p.confidence:.5f}",
                    *(f"{value:.5f}" for value in p.probabilities),
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="evaluation-{evaluation.pk}-predictions.csv"'
    return response
