"""The labelling workbench page: who may open it, what each filter and order shows,
pagination that keeps the filter, and a bounded number of queries."""

import json
import re

import pytest
from django.urls import reverse
from django.utils.timezone import now

from classification.models import ScoringRun
from datasets.models import Dataset, Image, Label, Split
from datasets.services import dataset_create, images_add
from datasets.workbench_views import CLASS_KEYS, workbench_classes
from tests.conftest import model_version_row
from tests.images import colour_items

pytestmark = pytest.mark.django_db


def _ids(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-id="(\d+)"', page)]


def _get(client, dataset: Dataset, **params: str) -> str:
    response = client.get(f"/datasets/{dataset.pk}/label/", params)
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def small(db: None) -> tuple[Dataset, list[Image]]:
    """Nine images (three per colour) in id order, each given one role below."""
    dataset = dataset_create(name="small")
    images_add(dataset=dataset, items=colour_items(3))
    images = list(Image.objects.filter(dataset=dataset).order_by("id"))
    red = Label.objects.get(dataset=dataset, name="red")
    scored = {  # image index: (suggestion, confidence, margin, entropy)
        1: ("red", 0.30, 0.05, 1.0),
        2: ("blue", 0.95, 0.90, 0.2),
        3: ("blue", 0.97, 0.94, 0.1),
        5: ("green", 0.60, 0.40, 0.7),
    }
    for index, (suggestion, confidence, margin, entropy) in scored.items():
        Image.objects.filter(pk=images[index].pk).update(
            suggestion=suggestion, suggestion_confidence=confidence, suggestion_margin=margin,
            suggestion_entropy=entropy, label=red,
        )  # fmt: skip
    Image.objects.filter(pk=images[0].pk).update(label=None)
    Image.objects.filter(pk=images[3].pk).update(label_checked=True)  # a person already confirmed red
    Image.objects.filter(pk=images[4].pk).update(needs_review=True)
    return dataset, images


def test_page_shows_tiles_suggestions_and_the_keys(admin_client, small):
    dataset, images = small
    page = _get(admin_client, dataset)
    assert _ids(page) == [i.pk for i in images]
    tile = re.search(rf'<div class="wb-tile[^"]*"[^>]*data-id="{images[2].pk}"[^>]*>', page, re.S).group(0)
    assert 'data-label="red"' in tile and 'data-suggestion="blue"' in tile and 'data-confidence="0.9500"' in tile
    assert 'data-version="0"' in tile and "wb-disagree" in tile
    assert "model: blue 95%" in page
    assert "<kbd>1</kbd> blue" in page and "<kbd>2</kbd> green" in page and "<kbd>3</kbd> red" in page
    assert 'id="wb-labelled">8<' in page and 'id="wb-total">9<' in page  # one of nine unlabelled
    assert "image-rendering" not in page  # styled by site.css, not inline
    assert f"/datasets/images/{images[0].pk}/thumbnail/" in page


def _config(page: str) -> dict:
    return json.loads(re.search(r'id="workbench-config" type="application/json">(.*?)</script>', page).group(1))


def test_config_names_the_api_and_the_applied_filter(admin_client, small):
    dataset, _ = small
    config = _config(_get(admin_client, dataset, show="unlabelled", split="train", order="newest"))
    assert config["urls"] == {
        "label": f"/api/v1/datasets/{dataset.pk}/label/",
        "undo": f"/api/v1/datasets/{dataset.pk}/undo/",
        "accept": f"/api/v1/datasets/{dataset.pk}/accept-suggestions/",
    }
    assert config["filter"] == {"show": "unlabelled", "label_id": None, "split": "train"}
    assert [c["name"] for c in config["classes"]] == ["blue", "green", "red"]
    assert [c["key"] for c in config["classes"]] == ["1", "2", "3"]
    # Accept-suggestions gets what the page shows for an unknown filter: everything.
    assert _config(_get(admin_client, dataset, show="x", split="x", label="²"))["filter"] == {
        "show": "all",
        "label_id": None,
        "split": "",
    }
    red = dataset.labels.get(name="red")
    assert _config(_get(admin_client, dataset, label=str(red.pk)))["filter"]["label_id"] == red.pk


@pytest.mark.parametrize(
    ("show", "expected"),
    [
        ("all", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("unlabelled", [0]),
        ("labelled", [1, 2, 3, 4, 5, 6, 7, 8]),
        ("low", [1]),
        ("disagree", [2, 3, 5]),
        ("review", [2, 4]),  # 3 is confirmed, 5 not confident enough
        ("nonsense", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
    ],
)
def test_each_filter_shows_its_images(admin_client, small, show, expected):
    dataset, images = small
    assert _ids(_get(admin_client, dataset, show=show)) == [images[i].pk for i in expected]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("oldest", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("newest", [8, 7, 6, 5, 4, 3, 2, 1, 0]),
        ("least_confidence", [1, 5, 2, 3, 0, 4, 6, 7, 8]),  # unscored last
        ("margin", [1, 5, 2, 3, 0, 4, 6, 7, 8]),
        ("entropy", [1, 5, 2, 3, 0, 4, 6, 7, 8]),
    ],
)
def test_each_order(admin_client, small, order, expected):
    dataset, images = small
    assert _ids(_get(admin_client, dataset, order=order)) == [images[i].pk for i in expected]


def test_class_and_split_filters(admin_client, small):
    dataset, images = small
    green = Label.objects.get(dataset=dataset, name="green")
    shown = _ids(_get(admin_client, dataset, label=str(green.pk)))
    assert shown == [i.pk for i in images if Image.objects.get(pk=i.pk).label_id == green.pk] and shown
    Image.objects.filter(dataset=dataset).update(split=Split.TRAIN)
    Image.objects.filter(pk__in=[images[6].pk, images[8].pk]).update(split=Split.TEST)
    assert _ids(_get(admin_client, dataset, split="test")) == [images[6].pk, images[8].pk]
    page = _get(admin_client, dataset, split="test", label=str(green.pk))
    assert f'<option value="{green.pk}" selected>green</option>' in page
    assert '<option value="test" selected>test</option>' in page


def test_pagination_keeps_the_filter(admin_client, colour_dataset):
    page = _get(admin_client, colour_dataset, show="labelled", order="newest")
    newest = list(Image.objects.filter(dataset=colour_dataset).order_by("-id").values_list("pk", flat=True))
    assert _ids(page) == newest[:60]
    assert 'href="?show=labelled&amp;order=newest&amp;page=2"' in page and "Page 1 of 2 (120 images)" in page
    second = _get(admin_client, colour_dataset, show="labelled", order="newest", page="2")
    assert _ids(second) == newest[60:]
    assert 'href="?show=labelled&amp;order=newest&amp;page=1"' in second
    assert _ids(_get(admin_client, colour_dataset, page="99")) == sorted(newest)[60:]  # past the end: the last page


def test_query_count_does_not_grow_with_the_page(admin_client, small, colour_dataset, django_assert_max_num_queries):
    Image.objects.filter(dataset=colour_dataset).update(suggestion="red", suggestion_confidence=0.8)
    version = model_version_row(colour_dataset)
    ScoringRun.objects.create(dataset=colour_dataset, model_version=version, status="succeeded", finished_at=now())
    for dataset in (small[0], colour_dataset):
        # session, user, dataset, classes, class counts, unlabelled, page count, page
        with django_assert_max_num_queries(8):
            page = _get(admin_client, dataset, show="disagree", order="least_confidence")
        # Where the suggestions came from is serving's panel, which the page fetches from serving's URL.
        assert reverse("scoring:panel", args=[dataset.pk]) in page
    panel = admin_client.get(reverse("scoring:panel", args=[colour_dataset.pk])).content.decode()
    assert f'Suggestions from <a href="/models/{version.pk}/">{version.name}</a>' in panel
    assert "Score with its live model" in panel


def test_class_names_are_escaped(admin_client, small):
    dataset, images = small
    label = Label.objects.create(dataset=dataset, name="<b>bold</b>")
    Image.objects.filter(pk=images[0].pk).update(label=label, suggestion="</script><b>")
    page = _get(admin_client, dataset)
    assert "<b>bold" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "</script><b>" not in page


def test_keys_run_out_after_36_classes():
    from datasets.selectors import ClassCount

    counts = [ClassCount(i, f"class {i:02d}", 1, 0, 0) for i in range(40)]
    classes = workbench_classes(list(reversed(counts)))
    assert [c.key for c in classes[:11]] == list("1234567890q")
    assert classes[35].key == CLASS_KEYS[-1] == "m" and classes[35].name == "class 35"
    assert [c.key for c in classes[36:]] == ["", "", "", ""]


def test_a_class_named_by_a_key_gets_that_key():
    """Digits keep their digits (class "0" is key 0, not key 1); other classes take the free keys."""
    from datasets.selectors import ClassCount

    names = ["0", "1", "9", "cat", "Dog", "Q"]
    classes = workbench_classes([ClassCount(i, n, 1, 0, 0) for i, n in enumerate(names)])
    assert {c.name: c.key for c in classes} == {"0": "0", "1": "1", "9": "9", "Dog": "2", "Q": "q", "cat": "3"}


def test_only_admins_open_it(client, member_client, small):
    dataset, _ = small
    url = f"/datasets/{dataset.pk}/label/"
    response = client.get(url)
    assert response.status_code == 302 and "login" in response["Location"]
    assert member_client.get(url).status_code == 302  # to the admin login
    assert b"wb-tile" not in member_client.get(url, follow=True).content


def test_missing_dataset_is_404(admin_client):
    assert admin_client.get("/datasets/999999/label/").status_code == 404


def test_dataset_page_links_to_the_workbench(admin_client, small):
    dataset, _ = small
    page = admin_client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert f'href="/datasets/{dataset.pk}/label/">Label images</a>' in page
