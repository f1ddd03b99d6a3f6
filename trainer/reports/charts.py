"""PNG pictures of an evaluation report: the confusion matrix as a seaborn heatmap
(counts or row-normalised) and the reliability diagram.

matplotlib's object API on the Agg canvas: no global figure state, no GUI. Only
workers draw (a test checks web processes never load this): seaborn imports
pyplot, so the backend is pinned to Agg first, whatever MPLBACKEND says.
"""

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
ANNOTATE_UP_TO = 20  # classes; beyond that the numbers would not fit their cells


def heatmap_inches(classes: int) -> tuple[float, float]:
    """Width and height: cells stay legible as classes grow (up to 40 inches)."""
    side = min(4 + 0.42 * classes, 40)
    return side + 1.5, side  # the colour bar takes the extra width


def confusion_heatmap(matrix: list[list[int]], classes: list[str], *, normalized: bool) -> bytes:
    """Rows are the true classes, columns the predicted ones; readable from 2 to 100 classes."""
    counts = np.asarray(matrix, dtype=float)
    n = len(classes)
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalized else counts
    figure = Figure(figsize=heatmap_inches(n), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    label_size = max(5, 11 - n // 12)
    sns.heatmap(
        values,
        ax=ax,
        cmap="Blues",
        vmin=0,
        vmax=1 if normalized else None,
        square=True,
        annot=n <= ANNOTATE_UP_TO,
        fmt=".2f" if normalized else ".0f",
        annot_kws={"size": max(6, 12 - n // 3)},
        xticklabels=classes,
        yticklabels=classes,
        cbar_kws={"shrink": 0.7},
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix" + (" (each row sums to 1)" if normalized else " (counts)"))
    # Long or many labels rotate so they never overlap.
    ax.tick_params(axis="x", labelrotation=90 if n > 12 else 45, labelsize=label_size)
    ax.tick_params(axis="y", labelrotation=0, labelsize=label_size)
    return _png(figure)


def reliability_diagram(bins: list[dict]) -> bytes:
    """Accuracy against confidence per bin, with the diagonal a calibrated model follows."""
    figure = Figure(figsize=(5, 5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    filled = [b for b in bins if b["count"]]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
           color="#4c72b0", edgecolor="white", label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="#dd8452",
            label="mean confidence")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")  # the figure's own size: the layout engine fits it
    return buffer.getvalue()
