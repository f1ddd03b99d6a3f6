"""Evaluation pictures: real PNGs of the expected size, for few and many classes."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from trainer.ml.metrics import calibration_bins
from trainer.reports.charts import DPI, confusion_heatmap, heatmap_inches, reliability_diagram


@pytest.mark.parametrize("classes", [2, 10, 100])
@pytest.mark.parametrize("normalized", [False, True])
def test_confusion_heatmap_is_a_png_sized_for_its_classes(classes, normalized):
    rng = np.random.default_rng(classes)
    matrix = (rng.integers(0, 5, (classes, classes)) + 50 * np.eye(classes, dtype=int)).tolist()
    matrix[0] = [0] * classes  # a class with no test images must not divide by zero
    names = [f"class number {i}" for i in range(classes)]
    png = confusion_heatmap(matrix, names, normalized=normalized)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG"
    width, height = heatmap_inches(classes)
    assert picture.size == (round(width * DPI), round(height * DPI))
    assert picture.getextrema() != ((255, 255),) * len(picture.getbands())  # not blank


def test_reliability_diagram_is_a_png():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(4), 200)
    bins = calibration_bins(rng.integers(0, 4, 200), probabilities)
    picture = Image.open(io.BytesIO(reliability_diagram(bins)))
    assert picture.format == "PNG" and picture.size == (5 * DPI, 5 * DPI)


def test_charts_draw_on_the_agg_backend_even_with_a_display_configured():
    import subprocess
    import sys

    # seaborn imports pyplot; charts pin its backend to Agg before that, whatever the environment says.
    code = "import matplotlib, trainer.reports.charts; print(matplotlib.get_backend())"
    run = subprocess.run([sys.executable, "-c", code], env={"MPLBACKEND": "TkAgg", "PATH": "/usr/bin:/bin"},
                         cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert run.stdout.strip().lower() == "agg"
