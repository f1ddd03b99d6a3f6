"""Data quality on real photos (issue 18): the Caltech-101 subset with planted faults,
analysed by the site (trainer.quality, in this process), each figure beside a reference
from the same run.

- 5% of the labels flipped to another class: precision and recall of the images confident
  learning flags, against the plain rule "a model trained on these labels disagrees"
  (a logistic-regression head on the same vectors, as a served transfer model would be);
- 30 near-duplicates planted across train and test (a train photo resized to 90%,
  cropped 4% at two sides and recompressed as JPEG quality 75, put in the test split):
  the share found in one group with their original, and the test accuracy of a head
  trained on the train split with and without them;
- 20 out-of-domain images (10 generated screenshots, 10 CIFAR-10 frogs and deer) filed
  under the photo classes: the share among the 40 most unusual images;
- "more like this": the query time at 1,271 vectors (the analysis's exact index) and at
  100,000 synthetic vectors (HNSW), each against a brute-force NumPy search, with the
  HNSW recall of the exact 10 nearest;
- "more like this" from an uploaded photo (20 dataset photos resized, cropped and
  recompressed as above): the share whose original comes first, and the time of a query
  through the stored ONNX extractor (decode, features, search: what a web process does)
  against the same query through the backbone in Keras.

    SHARED_WEIGHTS_DIR=../shared/weights/models .venv/bin/python benchmarks/data_quality.py
"""

import argparse
import io
import os
import pickle
import statistics
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets"
PHOTOS = SHARED / "caltech101_10class" / "caltech101_10class.zip"
CIFAR = SHARED / "cifar10" / "cifar-10-python.tar.gz"
FLIPPED_SHARE, COPIES, STRANGERS, TOP_OUTLIERS = 0.05, 30, 20, 40


def setup(work: Path, backbone: str) -> None:
    os.environ.update(DATABASE_URL=f"sqlite:///{work}/db.sqlite3", VAR_DIR=str(work), MEDIA_ROOT=str(work / "media"),
                      MODEL_CACHE_DIR=str(work / "models"), TRAIN_WORK_DIR=str(work / "training"),
                      KERAS_HOME=str(work / "keras"), TF_CPP_MIN_LOG_LEVEL="2")  # fmt: skip
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    weights = os.environ.get("SHARED_WEIGHTS_DIR", str(ROOT.parent / "shared" / "weights" / "models"))
    call_command("fetch_weights", backbone, "--from", weights, verbosity=0)


def photos() -> list[tuple[str, bytes, str]]:
    with zipfile.ZipFile(PHOTOS) as archive:
        return [(name.replace("/", "-"), archive.read(name), name.split("/")[0])
                for name in sorted(archive.namelist()) if name.lower().endswith(".jpg")]  # fmt: skip


def near_copy(data: bytes) -> bytes:
    """Resized to 90%, 4% cropped off the left and top, recompressed: the same photo, other bytes."""
    image = PILImage.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    image = image.resize((int(w * 0.9), int(h * 0.9))).crop(
        (int(w * 0.036), int(h * 0.036), int(w * 0.9), int(h * 0.9))
    )
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return out.getvalue()


def strangers(rng: np.random.Generator) -> list[bytes]:
    """Images of no class: generated screenshots (windows, text lines) and CIFAR-10 frogs and deer."""
    found = []
    for n in range(STRANGERS // 2):
        shot = PILImage.new("RGB", (300, 220), (245, 245, 245))
        draw = ImageDraw.Draw(shot)
        draw.rectangle((0, 0, 300, 24), fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
        for row in range(8):
            width = int(rng.integers(80, 260))
            draw.rectangle((12, 40 + 20 * row, 12 + width, 48 + 20 * row), fill=(60, 60, 60))
        draw.text((14, 6), f"Settings {n}", fill=(255, 255, 255))
        found.append(_png(shot))
    with tarfile.open(CIFAR) as archive:
        member = archive.extractfile("cifar-10-batches-py/test_batch")
        assert member is not None
        batch = pickle.load(member, encoding="bytes")
    wanted = [i for i, label in enumerate(batch[b"labels"]) if label in (4, 6)][: STRANGERS - len(found)]  # deer, frog
    for i in wanted:
        pixels = batch[b"data"][i].reshape(3, 32, 32).transpose(1, 2, 0)
        found.append(_png(PILImage.fromarray(pixels).resize((128, 128))))
    return found


def _png(image: PILImage.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def planted_dataset(rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
    from datasets.models import Image, Label, Split
    from datasets.services import dataset_create, images_add

    items = photos()
    dataset = dataset_create(name="caltech planted")
    images_add(dataset=dataset, items=items)
    classes = sorted({label for _, _, label in items})
    train = list(Image.objects.filter(dataset=dataset, split=Split.TRAIN).order_by("pk"))
    originals = [train[i] for i in rng.choice(len(train), COPIES, replace=False)]
    by_name = {name: data for name, data, _ in items}
    copies = [(f"copy-{o.original_name}", near_copy(by_name[o.original_name]), o.label.name) for o in originals]
    odd = [(f"stranger-{n}.png", data, classes[n % len(classes)]) for n, data in enumerate(strangers(rng))]
    images_add(dataset=dataset, items=copies + odd)
    Image.objects.filter(dataset=dataset, original_name__startswith="copy-").update(split=Split.TEST)
    photo_rows = list(Image.objects.filter(dataset=dataset).exclude(original_name__startswith="copy-")
                      .exclude(original_name__startswith="stranger-").exclude(pk__in=[o.pk for o in originals])
                      .select_related("label"))  # fmt: skip
    flipped = [photo_rows[i] for i in rng.choice(len(photo_rows), round(FLIPPED_SHARE * len(items)), replace=False)]
    labels = {label.name: label for label in Label.objects.filter(dataset=dataset)}
    for image in flipped:
        wrong = rng.choice([c for c in classes if c != image.label.name])
        Image.objects.filter(pk=image.pk).update(label=labels[str(wrong)])
    copy_of = {Image.objects.get(dataset=dataset, original_name=f"copy-{o.original_name}").pk: o.pk for o in originals}
    odd_ids = set(
        Image.objects.filter(dataset=dataset, original_name__startswith="stranger-").values_list("pk", flat=True)
    )
    return dataset, {"flipped": {i.pk for i in flipped}, "copies": copy_of, "strangers": odd_ids}


def precision_recall(flagged: set[int], truth: set[int]) -> tuple[float, float]:
    hits = len(flagged & truth)
    return (hits / len(flagged) if flagged else 0.0), hits / len(truth)


def label_figures(dataset: Any, truth: dict[str, Any], vectors: dict[int, np.ndarray]) -> None:
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression

    from datasets.models import Image
    from trainer.ml.data_quality import out_of_fold_probabilities

    planted = truth["flipped"]
    flagged = set(Image.objects.filter(dataset=dataset, label_issue_quality__isnull=False).values_list("pk", flat=True))
    p, r = precision_recall(flagged, planted)
    rows = list(Image.objects.filter(dataset=dataset, label__isnull=False).values_list("pk", "label_id"))
    pks = np.array([pk for pk, _ in rows])
    x = np.stack([vectors[pk] for pk, _ in rows])
    _, y = np.unique([label for _, label in rows], return_inverse=True)
    quality = get_label_quality_scores(y, out_of_fold_probabilities(x, y))  # the analysis's ranking
    cl_at_k = precision_recall(set(pks[np.argsort(quality)[: len(planted)]].tolist()), planted)[0]
    head = LogisticRegression(max_iter=1000).fit(x, y)  # trained on every (noisy) label, as a served model is
    probabilities = head.predict_proba(x)
    disagree = np.flatnonzero(probabilities.argmax(axis=1) != y)
    dp, dr = precision_recall(set(pks[disagree].tolist()), planted)
    surest = disagree[np.argsort(-probabilities[disagree].max(axis=1))][: len(planted)]  # the most confident first
    d_at_k = precision_recall(set(pks[surest].tolist()), planted)[0]
    print(f"label errors ({len(planted)} of {len(rows)} labels flipped):")
    print(f"  confident learning : {len(flagged):4d} flagged, precision {p:.2f}, recall {r:.2f}; "
          f"at the planted count (worst label quality first) precision = recall {cl_at_k:.2f}")  # fmt: skip
    print(f"  'model disagrees'  : {len(disagree):4d} flagged, precision {dp:.2f}, recall {dr:.2f}; "
          f"at the planted count (surest first) {d_at_k:.2f} (a head trained on these labels)")  # fmt: skip


def duplicate_figures(dataset: Any, run: Any, truth: dict[str, Any], vectors: dict[int, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression

    from datasets.models import Image, Split

    group_of = {pk: n for n, members in enumerate(run.report["groups"]) for pk in members}
    found = sum(
        1 for copy, original in truth["copies"].items() if copy in group_of and group_of[copy] == group_of.get(original)
    )
    rows = list(Image.objects.filter(dataset=dataset, label__isnull=False).values_list("pk", "label_id", "split"))
    train = [(pk, label) for pk, label, split in rows if split == Split.TRAIN]
    test = [(pk, label) for pk, label, split in rows if split == Split.TEST]
    head = LogisticRegression(max_iter=500).fit(np.stack([vectors[pk] for pk, _ in train]), [lb for _, lb in train])

    def accuracy(images: list[tuple[int, int]]) -> float:
        guesses = head.predict(np.stack([vectors[pk] for pk, _ in images]))
        return float(np.mean(guesses == np.array([lb for _, lb in images])))

    clean = [(pk, lb) for pk, lb in test if pk not in truth["copies"]]
    leaks = sum(1 for g in run.report["groups"] if {Image.objects.get(pk=pk).split for pk in g} >= {"train", "test"})
    print(f"near-duplicates ({COPIES} copies of train photos planted in test):")
    print(f"  found with their original: {found}/{COPIES} = {found / COPIES:.0%}; {len(run.report['groups'])} groups "
          f"in all, {leaks} spanning train and test")  # fmt: skip
    print(f"  test accuracy of a head on the train split: {accuracy(test):.3f} with the copies, "
          f"{accuracy(clean):.3f} without ({len(test)} and {len(clean)} test images)")  # fmt: skip


def outlier_figures(dataset: Any, truth: dict[str, Any]) -> None:
    from datasets.models import Image

    top = list(Image.objects.filter(dataset=dataset, outlier_score__isnull=False).order_by("outlier_score")
               .values_list("pk", flat=True)[:TOP_OUTLIERS])  # fmt: skip
    hits = len(set(top) & truth["strangers"])
    chance = STRANGERS / Image.objects.filter(dataset=dataset).count()
    print(f"outliers ({STRANGERS} out-of-domain images filed under the photo classes):")
    print(f"  {hits}/{STRANGERS} = {hits / STRANGERS:.0%} of them among the {len(top)} most unusual "
          f"(chance: {chance * len(top):.1f} of the {len(top)})")  # fmt: skip


def _median_ms(call: Any, queries: np.ndarray) -> float:
    times = []
    for query in queries:
        started = time.perf_counter()
        call(query)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def brute_force(matrix: np.ndarray, k: int) -> Any:
    return lambda q: np.argpartition(-(matrix @ q), k)[:k]


def query_figures(index: Any, rng: np.random.Generator, synthetic: int) -> None:
    from trainer.ml.data_quality import VectorIndex

    matrix = index.index.reconstruct_n(0, len(index))
    ids = index.ids[rng.choice(len(index), 200)]
    indexed = _median_ms(lambda i: index.neighbours(int(i), 12), ids)
    brute = _median_ms(brute_force(matrix, 12), matrix[rng.choice(len(index), 200)])
    print(f"more like this, {len(index):,} vectors of {matrix.shape[1]}: exact index {indexed:.3f} ms a query, "
          f"brute-force NumPy {brute:.3f} ms ({brute / indexed:.1f}x)")  # fmt: skip
    centres = rng.normal(size=(500, matrix.shape[1])).astype(np.float32)
    vectors = centres[rng.integers(0, 500, synthetic)] + 0.6 * rng.normal(size=(synthetic, matrix.shape[1])).astype(
        np.float32
    )
    started = time.perf_counter()
    hnsw = VectorIndex.build(vectors, np.arange(synthetic), exact=False)
    built = time.perf_counter() - started
    exact = VectorIndex.build(vectors, np.arange(synthetic), exact=True)
    queries = vectors[rng.choice(synthetic, 200)]
    approximate = _median_ms(lambda q: hnsw.search(q[None, :], 10), queries)
    flat = _median_ms(lambda q: exact.search(q[None, :], 10), queries)
    prepared = (vectors - hnsw.mean) / np.linalg.norm(vectors - hnsw.mean, axis=1, keepdims=True)
    brute = _median_ms(brute_force(prepared, 10), prepared[rng.choice(synthetic, 50)])
    recall = np.mean([len(set(hnsw.search(q[None, :], 10)[0][0]) & set(exact.search(q[None, :], 10)[0][0])) / 10
                      for q in queries])  # fmt: skip
    print(f"more like this, {synthetic:,} synthetic vectors: HNSW {approximate:.3f} ms a query (built in "
          f"{built:.0f} s), recall of the exact 10 nearest {recall:.3f}; exact faiss {flat:.2f} ms "
          f"({flat / approximate:.0f}x), "
          f"brute-force NumPy {brute:.2f} ms ({brute / approximate:.0f}x)")  # fmt: skip


def upload_figures(dataset: Any, run: Any, rng: np.random.Generator) -> None:
    from datasets.imaging import load_array
    from datasets.models import Image
    from trainer.ml import backbones
    from trainer.ml.features import traced
    from trainer.quality.selectors import similar_to_upload
    from trainer.quality.vectors import vectors_load

    by_name = {name: data for name, data, _ in photos()}
    rows = list(Image.objects.filter(dataset=dataset, original_name__in=by_name).values_list("pk", "original_name"))
    chosen = [rows[i] for i in rng.choice(len(rows), 20, replace=False)]
    uploads = [(pk, near_copy(by_name[name])) for pk, name in chosen]
    similar_to_upload(run, data=uploads[0][1])  # the first query loads the extractor: not what a query costs
    hits, onnx_ms = 0, []
    for pk, data in uploads:
        started = time.perf_counter()
        found = similar_to_upload(run, data=data, k=12)
        onnx_ms.append((time.perf_counter() - started) * 1000)
        hits += bool(found) and found[0].image.pk == pk
    keras_call = traced(backbones.feature_extractor(backbones.get(run.backbone), run.image_size))
    index = vectors_load(name=run.index_file, sha256=run.index_sha256)

    def through_keras(data: bytes) -> None:
        pixels = load_array(data, run.image_size)[None].astype(np.float32)
        index.search(keras_call(pixels).numpy(), 12)

    through_keras(uploads[0][1])
    keras_ms = []
    for _, data in uploads:
        started = time.perf_counter()
        through_keras(data)
        keras_ms.append((time.perf_counter() - started) * 1000)
    onnx, keras = statistics.median(onnx_ms), statistics.median(keras_ms)
    print(f"more like this from an upload: {hits} of {len(uploads)} recompressed photos found their original first; "
          f"{onnx:.1f} ms a query through the stored ONNX extractor, {keras:.1f} ms through Keras "
          f"({keras / onnx:.1f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilenetv2", help="an installed backbone (default mobilenetv2)")
    parser.add_argument("--synthetic", type=int, default=100_000, help="vectors for the large query test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        setup(Path(tmp), args.backbone)
        from trainer.quality.selectors import quality_latest_done
        from trainer.quality.services import quality_run, quality_start
        from trainer.quality.vectors import vectors_load

        dataset, truth = planted_dataset(rng)
        started = time.perf_counter()
        run = quality_run(run_id=quality_start(dataset=dataset, backbone=args.backbone, enqueue=False).pk)
        seconds = time.perf_counter() - started
        assert run is not None and run.status == "succeeded", run and run.error
        run = quality_latest_done(dataset=dataset)
        index = vectors_load(name=run.index_file, sha256=run.index_sha256)
        vectors = dict(zip(index.ids.tolist(), index.index.reconstruct_n(0, len(index)), strict=True))
        print(f"analysis of {run.processed} images with {run.backbone} at {run.image_size} px: {seconds:.0f} s "
              f"({seconds / run.processed * 1000:.0f} ms an image, features included)")  # fmt: skip
        label_figures(dataset, truth, vectors)
        duplicate_figures(dataset, run, truth, vectors)
        outlier_figures(dataset, truth)
        query_figures(index, rng, args.synthetic)
        upload_figures(dataset, run, rng)


if __name__ == "__main__":
    main()
