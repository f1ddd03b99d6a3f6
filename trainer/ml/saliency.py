"""Where the model looked (no Django, no TensorFlow): occlusion sensitivity. Grey windows
slide over the image in one batched call of the model; the more a window lowers the
probability of the class, the more that region mattered.

Chosen over Grad-CAM because it needs only forward passes: the served models run in
ONNX Runtime, which computes no gradients, and a web process loads no TensorFlow. At 224
px a map is GRID^2 = 49 forward passes of a frozen-head model, one batch.
"""

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

GRID = 8  # cells per side of the map
WINDOW = 2  # cells per side of an occluding window, which moves one cell at a time
GREY = 127.0  # what a window paints: mid-grey, the mean of no image in particular
OPACITY = 0.55  # of the heat colours over the photo, where the map is 1

Predict = Callable[[np.ndarray], np.ndarray]  # (n, size, size, 3) pixels -> (n, classes) probabilities


def occlusion_map(predict: Predict, image: np.ndarray, class_index: int) -> np.ndarray:
    """(GRID, GRID) float32 in 0..1: how much hiding each cell (within any window) lowered
    the probability of `class_index`, relative to the largest drop (all 0 when none did)."""
    size = image.shape[0]
    edges = np.linspace(0, size, GRID + 1).round().astype(int)
    starts = range(GRID - WINDOW + 1)
    batch = [np.asarray(image)]  # in the pixels' own type: a served ONNX model takes uint8
    for row in starts:
        for col in starts:
            hidden = batch[0].copy()
            hidden[edges[row] : edges[row + WINDOW], edges[col] : edges[col + WINDOW]] = GREY
            batch.append(hidden)
    probabilities = predict(np.stack(batch))[:, class_index]
    drops = np.clip(probabilities[0] - probabilities[1:], 0, None)
    heat = np.zeros((GRID, GRID), dtype=np.float32)
    for n, (row, col) in enumerate((r, c) for r in starts for c in starts):
        heat[row : row + WINDOW, col : col + WINDOW] += drops[n]
    top = float(heat.max())
    return heat / top if top > 0 else heat


def overlay_png(image: np.ndarray, heat: np.ndarray) -> bytes:
    """The image with the map laid over it in heat colours (blue low, red high), as PNG."""
    size = image.shape[0]
    smooth = (
        np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR))
        / 255.0
    )
    colours = np.stack([np.clip(1.5 - np.abs(4 * smooth - k), 0, 1) for k in (3, 2, 1)], axis=-1) * 255
    alpha = (OPACITY * smooth)[..., None]
    blended = np.asarray(image, dtype=np.float32) * (1 - alpha) + colours * alpha
    out = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
