"""The evaluation report of a model on one split, from its predicted probabilities:
plain arrays in, a JSON-ready dict out (scikit-learn does the counting)."""

from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, log_loss, top_k_accuracy_score

CALIBRATION_BINS = 15  # the usual choice for expected calibration error
# The headline figures, e.g. to set a model with and without flip TTA side by side.
SUMMARY_METRICS = ("accuracy", "top_k_accuracy", "top_k", "log_loss", "expected_calibration_error")


def report(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], top_k: int = 5) -> dict[str, Any]:
    """Accuracy, top-k accuracy, per-class precision/recall/F1/support, macro and
    weighted averages, log loss, calibration and the confusion matrix."""
    if len(y_true) == 0:
        return {"accuracy": None, "count": 0}
    labels = list(range(len(classes)))
    predicted = probabilities.argmax(axis=1)
    per_class = classification_report(
        y_true, predicted, labels=labels, target_names=classes, output_dict=True, zero_division=0
    )
    k = min(top_k, len(classes) - 1)  # top-k with k = number of classes is always 1: not worth showing
    calibration = calibration_bins(y_true, probabilities)
    return {
        "accuracy": float((predicted == y_true).mean()),
        "count": len(y_true),
        "top_k_accuracy": (float(top_k_accuracy_score(y_true, probabilities, k=k, labels=labels)) if k >= 2 else None),
        "top_k": k,
        "log_loss": float(log_loss(y_true, np.clip(probabilities, 1e-7, 1), labels=labels)),
        "per_class": {name: _rounded(per_class[name]) for name in classes},
        "macro_avg": _rounded(per_class["macro avg"]),
        "weighted_avg": _rounded(per_class["weighted avg"]),
        "expected_calibration_error": expected_calibration_error(calibration, len(y_true)),
        "calibration": calibration,
        "confusion_matrix": confusion_matrix(y_true, predicted, labels=labels).tolist(),
    }


def calibration_bins(y_true: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """The reliability diagram: predictions grouped by confidence (the top
    probability) into equal-width bins, with each bin's mean confidence and accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        rows.append(
            {
                "low": i / bins,
                "high": (i + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(bins: list[dict], total: int) -> float:
    """Mean gap between confidence and accuracy, weighted by how many predictions each bin holds."""
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def rejection_threshold(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """The confidence below which the model is more often wrong than right, chosen
    on a held-out split: answering "unknown" there turns more wrong answers away
    than right ones. It maximises (right - wrong) over the answers kept; the
    coverage and accuracy it gives on that split are returned beside it."""
    if len(y_true) == 0:
        return {"threshold": 0.0, "coverage": 1.0, "accuracy": None, "count": 0}
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    order = np.argsort(-confidence, kind="stable")
    gain = np.cumsum(np.where(correct[order], 1, -1))  # keeping the k most confident answers
    kept = int(np.argmax(gain)) + 1
    # Ties in confidence keep or drop together, so the threshold is the lowest kept value.
    # A model wrong more often than right at every level gets no threshold: turning
    # away every answer would help no one.
    threshold = float(confidence[order][kept - 1]) if kept < len(y_true) and gain[kept - 1] > 0 else 0.0
    accepted = confidence >= threshold
    return {
        "threshold": threshold,
        "coverage": float(accepted.mean()),
        "accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "count": len(y_true),
    }


def _rounded(row: dict[str, float]) -> dict[str, float]:
    return {key: (int(value) if key == "support" else float(value)) for key, value in row.items()}
