"""The evaluation report against answers worked out by hand and against sklearn."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, precision_score, recall_score

from trainer.ml.metrics import SUMMARY_METRICS, report

CLASSES = ["cat", "dog", "bird"]


def _probabilities(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_report_counts_a_small_case_worked_out_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = _probabilities(
        [
            [0.9, 0.05, 0.05],  # cat, right, confident
            [0.2, 0.7, 0.1],  # cat taken for a dog; cat second
            [0.1, 0.8, 0.1],  # dog, right
            [0.1, 0.6, 0.3],  # dog, right
            [0.3, 0.1, 0.6],  # bird, right
            [0.5, 0.1, 0.4],  # bird taken for a cat; bird second
        ]
    )
    result = report(y, probs, CLASSES)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["count"] == 6
    assert result["top_k"] == 2 and result["top_k_accuracy"] == 1.0  # every truth is in the top two
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    cat, dog, bird = (result["per_class"][name] for name in CLASSES)
    assert (cat["precision"], cat["recall"], cat["support"]) == (0.5, 0.5, 2)
    assert (dog["precision"], dog["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (bird["precision"], bird["recall"]) == (1.0, 0.5)
    expected_loss = -np.mean(np.log([0.9, 0.2, 0.8, 0.6, 0.6, 0.4]))
    assert result["log_loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_report_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(7)
    classes = [f"c{i}" for i in range(10)]
    y = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10)) + 2.0 * np.eye(10)[y]  # better than chance, far from perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    result = report(y, probs, classes)
    assert result["accuracy"] == pytest.approx((predicted == y).mean())
    for average in ("macro", "weighted"):
        row = result[f"{average}_avg"]
        assert row["precision"] == pytest.approx(precision_score(y, predicted, average=average))
        assert row["recall"] == pytest.approx(recall_score(y, predicted, average=average))
        assert row["f1-score"] == pytest.approx(f1_score(y, predicted, average=average))
    per_class_f1 = f1_score(y, predicted, average=None)
    assert [result["per_class"][c]["f1-score"] for c in classes] == pytest.approx(list(per_class_f1))
    assert result["log_loss"] == pytest.approx(log_loss(y, probs), rel=1e-5)
    top5 = np.mean([y[i] in np.argsort(-probs[i])[:5] for i in range(len(y))])
    assert result["top_k"] == 5 and result["top_k_accuracy"] == pytest.approx(top5)
    assert np.array(result["confusion_matrix"]).sum() == 500
    assert set(SUMMARY_METRICS) <= set(result)


def test_calibration_bins_and_expected_calibration_error():
    # Four predictions at confidence 0.95 (three right), two at 0.55 (both right).
    y = np.array([0, 0, 0, 1, 0, 1])
    probs = _probabilities([[0.95, 0.05]] * 4 + [[0.55, 0.45], [0.45, 0.55]])
    result = report(y, probs, ["a", "b"])
    filled = [b for b in result["calibration"] if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [(2, 1.0), (4, 0.75)]
    assert filled[0]["confidence"] == pytest.approx(0.55) and filled[1]["confidence"] == pytest.approx(0.95)
    assert len(result["calibration"]) == 15 and sum(b["count"] for b in result["calibration"]) == 6
    # ECE = 2/6 * |1.0 - 0.55| + 4/6 * |0.75 - 0.95|
    assert result["expected_calibration_error"] == pytest.approx(2 / 6 * 0.45 + 4 / 6 * 0.2, rel=1e-5)
    assert result["top_k_accuracy"] is None  # with two classes, top-2 is always right: not reported


def test_a_class_never_predicted_or_absent_reports_zero_not_an_error():
    y = np.array([0, 0, 1])
    probs = _probabilities([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    result = report(y, probs, CLASSES)
    assert result["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 1}
    assert result["per_class"]["bird"]["support"] == 0
    assert report(np.array([], dtype=int), np.zeros((0, 3)), CLASSES) == {"accuracy": None, "count": 0}
