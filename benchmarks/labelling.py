"""Labelling workbench speed: server time for the page and for one label change.

Builds a 60,000-image dataset (CIFAR-10's size: 10 classes, 50,000 labelled, 10,000
unlabelled, every image scored with a suggestion) in a fresh database, then times
requests through Django's full stack (middleware, session, templates; no network):

- the workbench page (first page, active-learning orders, the review queue, a deep
  page), target < 300 ms; reference: the login page (the site's base template, no data);
- one label change through POST /api/v1/datasets/{id}/label/ (what a key press
  sends), target < 50 ms; reference: the bare conditional UPDATE it performs, in a
  transaction; also a page of 60 images at once, an undo, and accept-suggestions.

    .venv/bin/python benchmarks/labelling.py                    # SQLite in a temp folder
    .venv/bin/python benchmarks/labelling.py --database-url postgres://postgres@127.0.0.1:5432/bench_labelling
      (an empty PostgreSQL database that may be dropped and recreated)
"""

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PAGE_TARGET_MS = 300
CHANGE_TARGET_MS = 50


def configure(work: Path, database_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="classifier_site.settings",
        VAR_DIR=str(work / "var"),
        DATABASE_URL=database_url or f"sqlite:///{work / 'db.sqlite3'}",
        MEDIA_ROOT=str(work / "media"),
        STATIC_ROOT=str(work / "static"),
        CACHE_URL=f"filecache://{work / 'cache'}",
        CELERY_BROKER_URL=f"sqla+sqlite:///{work / 'broker.sqlite3'}",
        # Production-like: no debug bookkeeping (DEBUG keeps every query's SQL).
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="testserver",
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        CONN_MAX_AGE="600",
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def build(size: int, unlabelled: int) -> Any:
    """A dataset of `size` image rows (files are not needed to render or label them)."""
    from django.core.management import call_command
    from django.db import connection

    from datasets.models import Image, Label, Split
    from datasets.services import dataset_create

    call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG off: hashed static names
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)  # a reused PostgreSQL database starts empty
    dataset = dataset_create(name="cifar10-sized")
    labels = Label.objects.bulk_create(Label(dataset=dataset, name=n) for n in CLASSES)
    rng = random.Random(0)
    rows = []
    for i in range(size):
        confidence = rng.uniform(0.1, 1.0)
        rows.append(Image(
            dataset=dataset, file=f"images/{i:064x}.png", thumbnail="", original_name=f"{i:05d}.png",
            sha256=f"{i:064x}", width=32, height=32,
            label=None if i >= size - unlabelled else labels[i % len(labels)],
            split=Split.TEST if i % 6 == 5 else Split.TRAIN, suggestion=CLASSES[rng.randrange(len(CLASSES))],
            suggestion_confidence=confidence, suggestion_margin=confidence * rng.uniform(0, 1),
            suggestion_entropy=rng.uniform(0, 2.3),
        ))  # fmt: skip
    Image.objects.bulk_create(rows, batch_size=2000)
    if connection.vendor == "postgresql":
        # What autovacuum does within a minute of a bulk load: statistics, and the visibility
        # map that lets the class counts read the index alone. (SQLite has no such daemon,
        # and Django never runs ANALYZE there, so its figures go without.)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE datasets_image")
    return dataset


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    for _ in range(3):  # warm: templates compiled, connection open, caches filled
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def line(name: str, times: list[float], reference: float | None = None, target: float | None = None) -> None:
    p50 = statistics.median(times)
    p90 = sorted(times)[int(len(times) * 0.9) - 1]
    ratio = f"  {p50 / reference:5.1f}x reference" if reference else ""
    verdict = f"  target < {target:.0f} ms: {'met' if p90 < target else 'NOT met'} (p90)" if target else ""
    print(f"  {name:<52} p50 {p50:7.1f} ms  p90 {p90:7.1f} ms{ratio}{verdict}")


def get(client: Any, url: str) -> Callable[[], object]:
    def call() -> object:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return response

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--unlabelled", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-labelling-") as tmp:
        configure(Path(tmp), args.database_url)
        from django.conf import settings

        print(f"Database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}; building "
              f"{args.images:,} images ({args.unlabelled:,} unlabelled) ...", flush=True)  # fmt: skip
        started = time.perf_counter()
        dataset = build(args.images, args.unlabelled)
        print(f"  built in {time.perf_counter() - started:.1f} s\n")
        run(dataset, args.repeat)


def run(dataset: Any, repeat: int) -> None:
    from django.contrib.auth.models import User
    from django.db import transaction
    from django.db.models import F
    from django.test import Client
    from django.urls import reverse

    from datasets.models import Image

    admin = User.objects.create_superuser("bench", password="bench-pass-123")
    client = Client()
    client.force_login(admin)
    page = reverse("datasets:workbench", args=[dataset.pk])

    print("Workbench page (server time through the whole Django stack):")
    reference = statistics.median(timed(get(client, reverse("login")), repeat))
    line("reference: the login page (base template, no data)", [reference])
    last = (Image.objects.filter(dataset=dataset).count() + 59) // 60
    for name, query in [
        ("first page, all images", ""),
        ("unlabelled, least confident first", "?show=unlabelled&order=least_confidence"),
        ("unlabelled, highest entropy first", "?show=unlabelled&order=entropy"),
        ("review queue (likely label errors)", "?show=review"),
        ("one class, disagreements, smallest margin first", "?show=disagree&label=" + str(dataset.labels.first().pk)
         + "&order=margin"),
        (f"last page ({last:,}) of all images", f"?page={last}"),
    ]:  # fmt: skip
        line(name, timed(get(client, page + query), repeat), reference, PAGE_TARGET_MS)

    print("\nLabel changes:")
    ids = list(Image.objects.filter(dataset=dataset, label__isnull=True).values_list("pk", flat=True)[:600])
    url = reverse("dataset-label", args=[dataset.pk])
    versions = dict(Image.objects.filter(pk__in=ids).values_list("pk", "label_version"))
    counter = iter(range(10**9))

    def bare_update() -> None:
        pk = ids[next(counter) % len(ids)]
        with transaction.atomic():
            Image.objects.filter(pk=pk, label_version=versions[pk]).update(label_version=F("label_version") + 1)
        versions[pk] += 1

    bare = statistics.median(timed(bare_update, repeat))
    line("reference: the bare conditional UPDATE, in a transaction", [bare])

    def change(count: int) -> Callable[[], object]:
        def call() -> object:
            start = next(counter) * count
            chosen = [ids[(start + k) % len(ids)] for k in range(count)]
            changes = [{"image": pk, "label": random.choice(CLASSES), "version": versions[pk]} for pk in chosen]
            response = client.post(url, {"changes": changes, "source": "workbench"}, content_type="application/json")
            assert response.status_code == 200, response.content
            versions.update({i["id"]: i["version"] for i in response.json()["images"]})
            return response

        return call

    line("one image (a key press)", timed(change(1), repeat), bare, CHANGE_TARGET_MS)
    line("a page of 60 images (bulk assign)", timed(change(60), repeat), bare)
    # Undo: fresh single changes on images nothing else touches, then undo them one by one.
    undo = reverse("dataset-undo", args=[dataset.pk])
    spare = list(Image.objects.filter(dataset=dataset, label__isnull=False).values_list("pk", "label_version")[:13])
    for pk, version in spare:
        client.post(
            url, {"changes": [{"image": pk, "label": None, "version": version}]}, content_type="application/json"
        )

    def undo_one() -> None:
        response = client.post(undo)
        assert response.status_code == 200, response.content

    line("undo of one change", timed(undo_one, 10), bare)
    accept = reverse("dataset-accept-suggestions", args=[dataset.pk])
    started = time.perf_counter()
    response = client.post(accept, {"min_confidence": 0.9, "show": "unlabelled"}, content_type="application/json")
    elapsed = (time.perf_counter() - started) * 1000
    print(f"  accept suggestions >= 90% of the unlabelled: {response.json()['accepted']:,} images in {elapsed:.0f} ms")


if __name__ == "__main__":
    main()
