"""What is wrong with a dataset, read off its images' feature vectors (no Django here):
near-duplicate groups, label errors by confident learning, outliers, classes too small.

The vectors are a frozen backbone's pooled features, the same ones the photo recipe
caches for training, centred on the dataset's mean and scaled to length 1 by the
VectorIndex; every finding reads those rows. The maths is the libraries': faiss for
nearest neighbours (exact inner product up to EXACT_LIMIT vectors, HNSW graphs above,
where an exact search per query would read every vector), scikit-learn for the
out-of-fold probabilities and cleanlab for which labels those probabilities contradict.
The thresholds were measured on real photos with planted faults
(benchmarks/data_quality.py on the Caltech-101 subset, MobileNetV2 features).
"""

import io
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Centred cosine similarity from which two images are one photo. Planted copies (resized
# to 90%, cropped 4%, JPEG quality 75) scored 0.82-0.97, median 0.895; 90% reach 0.86.
# Above it, the Caltech photos themselves hold mostly mirrored and re-shot copies, and a few
# catalogue shots of two objects in one pose: worth a look either way.
NEAR_DUPLICATE = 0.86
CENTRE_MIN = 50  # images from which their mean is the dataset's, not mostly the images themselves
EXACT_LIMIT = 20_000  # vectors searched exactly; above, an HNSW graph (approximate, ~log n per query)
HNSW_NEIGHBOURS = 32  # edges per node: faiss's usual value for recall above 0.95
NEIGHBOURS_CHECKED = 10  # per image when grouping duplicates (larger groups chain) and per class for outliers
FOLDS = 5  # out-of-fold probabilities: each image scored by a head that never saw it
# The head's inverse regularisation: on the planted Caltech labels C=3 flagged with precision
# 0.95 and recall 0.84 (cleanlab's "both" filter), C=1 0.92 and 0.75.
HEAD_C = 3.0
SMALL_CLASS = 10  # images below which a class is too small to learn (and to evaluate)
SMALL_SHARE = 0.2  # of the median class: below it a class is drowned out by the others


def unit(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of length 1 (an all-zero row stays zero): inner product is then cosine."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class VectorIndex:
    """The nearest images of a vector by cosine similarity, named by image id.

    Vectors are centred on the dataset's mean first (from CENTRE_MIN images on): pooled
    ReLU features all point into one orthant, so any two photos have a high raw cosine;
    centred, unrelated photos come out near 0 and copies near 1 (the usual step before
    nearest-neighbour retrieval on CNN features)."""

    def __init__(self, index: Any, ids: np.ndarray, mean: np.ndarray) -> None:
        self.index, self.ids, self.mean = index, np.asarray(ids, dtype=np.int64), np.asarray(mean, dtype=np.float32)

    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: Sequence[int] | np.ndarray, *, exact: bool | None = None, centre: bool = True
    ) -> "VectorIndex":
        import faiss

        raw = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        mean = raw.mean(axis=0) if centre and len(raw) >= CENTRE_MIN else np.zeros(raw.shape[1], np.float32)
        rows = unit(raw - mean)
        if exact is None:
            exact = len(rows) <= EXACT_LIMIT
        index: Any
        if exact:
            index = faiss.IndexFlatIP(rows.shape[1])
        else:
            index = faiss.IndexHNSWFlat(rows.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 64  # candidates kept per query: recall against time
        index.add(rows)
        return cls(index, np.asarray(ids), mean)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def exact(self) -> bool:
        import faiss

        return isinstance(self.index, faiss.IndexFlat)

    def rows(self) -> np.ndarray:
        """Every indexed vector as the index holds it (centred, length 1), in `ids` order."""
        return np.asarray(self.index.reconstruct_n(0, len(self)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, similarities), each (queries, k), best first; id -1 where fewer exist."""
        raw = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        return self.search_prepared(unit(raw - self.mean), k)

    def neighbours(self, image_id: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The `k` nearest images of one indexed image, itself left out; None when it is not indexed."""
        rows = np.flatnonzero(self.ids == image_id)
        if not len(rows):
            return None
        ids, similarities = self.search_prepared(self.index.reconstruct(int(rows[0]))[None, :], k + 1)
        keep = (ids[0] != image_id) & (ids[0] >= 0)
        return ids[0][keep][:k], similarities[0][keep][:k]

    def search_prepared(self, prepared: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As `search`, for rows already centred and of length 1 (the index's own rows)."""
        k = max(min(k, len(self)), 1)
        similarities, rows = self.index.search(prepared, k)
        ids = np.where(rows >= 0, self.ids[np.clip(rows, 0, None)], -1)
        return ids, similarities

    def to_bytes(self) -> bytes:
        import faiss

        buffer = io.BytesIO()
        np.savez(buffer, index=faiss.serialize_index(self.index), ids=self.ids, mean=self.mean)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "VectorIndex":
        import faiss

        stored = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(faiss.deserialize_index(stored["index"]), stored["ids"], stored["mean"])


def near_duplicate_groups(index: VectorIndex, *, threshold: float = NEAR_DUPLICATE) -> list[list[int]]:
    """Groups (image ids, two or more) linked by a similarity of `threshold` or more,
    largest first: a copy of a copy joins the original's group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(index)
    if n < 2:
        return []
    found, similarities = index.search_prepared(index.rows(), NEIGHBOURS_CHECKED + 1)
    position = {int(pk): p for p, pk in enumerate(index.ids.tolist())}
    rows = np.vectorize(lambda pk: position.get(int(pk), -1))(found)
    source = np.repeat(np.arange(n), rows.shape[1])
    linked = (similarities.ravel() >= threshold) & (rows.ravel() >= 0) & (rows.ravel() != source)
    graph = coo_matrix((np.ones(linked.sum()), (source[linked], rows.ravel()[linked])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for p, group in enumerate(component):
        groups.setdefault(int(group), []).append(int(index.ids[p]))
    members = [sorted(g) for g in groups.values() if len(g) > 1]
    return sorted(members, key=lambda g: (-len(g), g[0]))


def out_of_fold_probabilities(
    vectors: np.ndarray, labels: np.ndarray, *, folds: int = FOLDS, seed: int = 0
) -> np.ndarray:
    """(n, classes) probabilities, each row from a logistic-regression head trained on
    the other folds: what the data says of an image without its own label's say."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.asarray(labels)
    smallest = int(np.bincount(labels).min())
    splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
    head = LogisticRegression(max_iter=1000, C=HEAD_C)
    return cross_val_predict(head, vectors, labels, cv=splitter, method="predict_proba")


@dataclass(frozen=True)
class LabelIssue:
    position: int  # row in the vectors given
    quality: float  # cleanlab's label quality, 0 (surely wrong) to 1
    suggested: int  # the class the out-of-fold head prefers


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> list[LabelIssue]:
    """The labels confident learning finds wrong, worst first (cleanlab's `find_label_issues`)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels)
    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return []
    quality = get_label_quality_scores(labels, probabilities)
    # "both": flagged by the per-class thresholds and by the estimated noise rates; the fewest
    # false alarms for a review queue (precision 0.95 against 0.89 for the default filter)
    # n_jobs=1: cleanlab's own process pool cannot start inside a Celery worker's pool process
    # (a daemon); the work is a few milliseconds of NumPy per class anyway.
    flagged = find_label_issues(
        labels, probabilities, filter_by="both", return_indices_ranked_by="self_confidence", n_jobs=1
    )
    return [LabelIssue(int(i), float(quality[i]), int(np.argmax(probabilities[i]))) for i in flagged]


def disagreements(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The plain rule beside confident learning: positions whose top class is not their label."""
    return np.flatnonzero(np.argmax(probabilities, axis=1) != np.asarray(labels))


def outlier_scores(rows: np.ndarray, classes: np.ndarray, *, neighbours: int = NEIGHBOURS_CHECKED) -> np.ndarray:
    """Per image, how like its nearest class it is: the mean similarity to the `neighbours`
    most similar images of each class, at the class where that is highest (-1..1; low: like
    no class, wrong data). `classes` gives each row's class (-1: unlabelled, scored but not
    compared with); with no class at all, the images are one class. Per class, so a handful
    of strangers alike (ten screenshots) still stands out: on the planted Caltech photos 19 of
    20 strangers came among the 40 lowest, against 1 of 20 for cleanlab's k-nearest-neighbour
    score over all images (the strangers' nearest neighbours are each other)."""
    classes = np.asarray(classes)
    groups = [np.flatnonzero(classes == c) for c in np.unique(classes[classes >= 0])] or [np.arange(len(rows))]
    best = np.full(len(rows), -1.0)
    for members in groups:
        if len(members) < 2:
            continue
        k = min(neighbours, len(members) - 1)
        index = VectorIndex.build(rows[members], members, centre=False)  # rows are centred already
        found, similarities = index.search_prepared(np.ascontiguousarray(rows, dtype=np.float32), k + 1)
        own = found == np.arange(len(rows))[:, None]  # an image is not its own neighbour
        similarities = np.where(own | (found < 0), np.nan, similarities)
        ranked = -np.sort(-np.nan_to_num(similarities, nan=-np.inf), axis=1)[:, :k]
        best = np.maximum(best, ranked.mean(axis=1))
    return best


@dataclass(frozen=True)
class SmallClass:
    name: str
    images: int
    needed: int  # images to add for SMALL_CLASS


def small_classes(
    counts: dict[str, int], *, minimum: int = SMALL_CLASS, share: float = SMALL_SHARE
) -> list[SmallClass]:
    """Classes with fewer labelled images than `minimum` or than `share` of the median
    class, smallest first, with how many images would lift each out of it."""
    if not counts:
        return []
    floor = max(minimum, math.ceil(share * statistics.median(counts.values())))
    small = [SmallClass(name, n, floor - n) for name, n in counts.items() if n < floor]
    return sorted(small, key=lambda c: (c.images, c.name))
