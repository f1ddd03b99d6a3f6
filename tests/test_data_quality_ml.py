"""The data-quality maths on generated vectors: near-duplicate groups, the vector index
(exact and HNSW, stored and read back), label errors by confident learning, outliers and
small classes. No Django, no TensorFlow: seconds."""

import numpy as np
import pytest

from trainer.ml.data_quality import (
    VectorIndex,
    disagreements,
    label_issues,
    near_duplicate_groups,
    out_of_fold_probabilities,
    outlier_scores,
    small_classes,
    unit,
)

DIM = 64


def clusters(per_class: int, classes: int, *, spread: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors around one random centre per class, and their class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, DIM))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), DIM)), labels


def test_copies_of_an_image_form_one_group_and_distinct_images_none():
    rng = np.random.default_rng(1)
    photos = rng.normal(size=(50, DIM))
    copies = np.stack([photos[0] + 0.05 * rng.normal(size=DIM) for _ in range(3)] + [photos[7] * 1.3])
    ids = np.arange(100, 154)
    groups = near_duplicate_groups(VectorIndex.build(np.vstack([photos, copies]), ids))
    assert groups == [[100, 150, 151, 152], [107, 153]]  # a rescaled copy counts: cosine ignores length


def test_a_copy_of_a_copy_joins_the_original_s_group():
    base = np.zeros(DIM)
    base[0] = 1.0
    chain = [base]
    for _ in range(3):  # each step ~0.95 from the previous, the ends further apart than the threshold
        step = chain[-1].copy()
        step[len(chain)] = 0.33
        chain.append(step / np.linalg.norm(step))
    others = np.eye(DIM)[10:20]
    groups = near_duplicate_groups(VectorIndex.build(np.vstack([*chain, others]), np.arange(14)), threshold=0.94)
    assert float(unit(np.stack([chain[0], chain[-1]])).prod(axis=0).sum()) < 0.94
    assert groups == [[0, 1, 2, 3]]


def test_fewer_than_two_images_have_no_groups():
    assert near_duplicate_groups(VectorIndex.build(np.ones((1, DIM)), [5])) == []


@pytest.mark.parametrize("exact", [True, False])
def test_the_index_finds_the_nearest_images_by_id_and_survives_storage(exact):
    vectors, _ = clusters(40, 5)
    ids = np.arange(1000, 1200)
    index = VectorIndex.from_bytes(VectorIndex.build(vectors, ids, exact=exact).to_bytes())
    assert index.exact is exact and len(index) == 200
    found, similarity = index.search(vectors[[3, 77]], 5)
    assert found[:, 0].tolist() == [1003, 1077] and np.allclose(similarity[:, 0], 1.0, atol=1e-4)
    assert (np.diff(similarity, axis=1) <= 1e-6).all()  # best first
    assert set(found[0]) <= set(range(1000, 1040))  # its own class's images are the nearest


def test_asking_for_more_neighbours_than_images_gives_every_image():
    found, _ = VectorIndex.build(np.eye(3, DIM), [7, 8, 9]).search(np.eye(1, DIM), 10)
    assert sorted(found[0].tolist()) == [7, 8, 9]


def test_confident_learning_finds_flipped_labels_and_suggests_the_true_class():
    vectors, truth = clusters(30, 4, spread=0.6)
    noisy = truth.copy()
    flipped = [2, 40, 75, 100]
    noisy[flipped] = (truth[flipped] + 1) % 4
    probabilities = out_of_fold_probabilities(vectors, noisy)
    assert probabilities.shape == (120, 4) and np.allclose(probabilities.sum(axis=1), 1.0)
    issues = label_issues(noisy, probabilities)
    found = {issue.position for issue in issues}
    assert set(flipped) <= found and len(found) <= 8  # recall 1, precision at least a half
    by_position = {issue.position: issue for issue in issues}
    assert all(by_position[p].suggested == truth[p] for p in flipped)
    assert all(0.0 <= issue.quality <= 1.0 for issue in issues)
    assert set(flipped) <= set(disagreements(noisy, probabilities).tolist())


def test_clean_labels_give_no_issues_and_one_class_gives_none():
    vectors, labels = clusters(20, 3, spread=0.2)
    assert label_issues(labels, out_of_fold_probabilities(vectors, labels)) == []
    assert label_issues(np.zeros(5, dtype=int), np.ones((5, 1))) == []


def test_a_class_with_a_single_image_still_gets_out_of_fold_probabilities():
    vectors, labels = clusters(10, 2)
    vectors, labels = np.vstack([vectors, np.ones((1, DIM))]), np.append(labels, 2)
    with pytest.warns(UserWarning):  # scikit-learn says a fold lacks the class; its column is 0 there
        probabilities = out_of_fold_probabilities(vectors, labels)
    assert probabilities.shape == (21, 3)


def test_images_far_from_every_class_score_lowest_even_when_they_are_alike():
    vectors, labels = clusters(25, 4, spread=0.2)
    stranger = np.random.default_rng(9).normal(size=DIM) * 3
    alike = stranger + 0.3 * np.random.default_rng(10).normal(size=(6, DIM))  # six strangers like each other
    rows = VectorIndex.build(np.vstack([vectors, alike]), np.arange(106)).rows()
    classes = np.append(labels, [0, 1, 2, 3, -1, -1])  # filed under the classes, or unlabelled
    scores = outlier_scores(rows, classes)
    assert set(np.argsort(scores)[:6].tolist()) == set(range(100, 106))
    assert ((scores >= -1) & (scores <= 1)).all()


def test_without_classes_the_images_are_one_class_and_tiny_sets_are_scored():
    rows = unit(np.random.default_rng(0).normal(size=(5, DIM)))
    assert len(outlier_scores(rows, np.full(5, -1))) == 5
    assert outlier_scores(unit(np.ones((2, DIM))), np.array([0, 0])).tolist() == pytest.approx([1.0, 1.0])


def test_small_classes_are_those_under_ten_images_or_a_fifth_of_the_median():
    small = small_classes({"cat": 200, "dog": 180, "owl": 30, "emu": 4, "yak": 190})
    assert [(c.name, c.images, c.needed) for c in small] == [("emu", 4, 32), ("owl", 30, 6)]
    assert [c.name for c in small_classes({"a": 12, "b": 9})] == ["b"]
    assert small_classes({}) == []
