"""Label changes: optimistic locking, history, undo, suggestions, the review queue, the API."""

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from datasets.labelling import (
    LabelConflict,
    LabelEdit,
    image_add_correction,
    images_label_set,
    label_change_undo,
    label_delete,
    label_merge,
    suggestions_accept,
)
from datasets.models import ChangeSource, Dataset, Image, LabelChange
from datasets.selectors import workbench_images
from datasets.services import dataset_create, images_add
from tests.images import colour_image, colour_items

pytestmark = pytest.mark.django_db


@pytest.fixture
def small(db: None) -> Dataset:
    """Two labelled red and green images, and four unlabelled ones."""
    dataset = dataset_create(name="small")
    images_add(dataset=dataset, items=colour_items(2, ("red", "green")))
    images_add(dataset=dataset, items=[(f"u{i}.png", colour_image("blue", seed=100 + i), None) for i in range(4)])
    return dataset


@pytest.fixture
def api(admin_user: object) -> APIClient:
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def _ids(dataset: Dataset, **filters: object) -> list[int]:
    return list(Image.objects.filter(dataset=dataset, **filters).order_by("id").values_list("pk", flat=True))


def _label(pk: int) -> str | None:
    image = Image.objects.select_related("label").get(pk=pk)
    return image.label.name if image.label else None


def test_label_set_bumps_versions_records_history_and_creates_classes(small, admin_user):
    first, second = _ids(small, label__isnull=True)[:2]
    result = images_label_set(
        dataset=small, edits=[LabelEdit(first, "blue", 0), LabelEdit(second, " sky  blue ", 0)],
        user=admin_user, source=ChangeSource.WORKBENCH,
    )  # fmt: skip
    assert [(i.label, i.version) for i in result.images] == [("blue", 1), ("sky blue", 1)]
    assert _label(first) == "blue" and _label(second) == "sky blue"
    assert set(small.labels.values_list("name", flat=True)) == {"red", "green", "blue", "sky blue"}
    changes = LabelChange.objects.filter(batch=result.batch).order_by("image_id")
    assert [(c.old_label, c.new_label, c.version, c.user, c.source) for c in changes] == [
        ("", "blue", 1, admin_user, "workbench"),
        ("", "sky blue", 1, admin_user, "workbench"),
    ]
    assert Image.objects.get(pk=first).label_checked


def test_a_stale_version_is_refused_and_nothing_in_the_batch_applies(small, admin_user, django_user_model):
    alice = django_user_model.objects.create_user("alice", password="x")
    first, second = _ids(small, label__isnull=True)[:2]
    images_label_set(dataset=small, edits=[LabelEdit(first, "red", 0)], user=alice, source=ChangeSource.API)
    with pytest.raises(LabelConflict) as caught:
        images_label_set(
            dataset=small, edits=[LabelEdit(second, "green", 0), LabelEdit(first, "green", 0)],
            user=admin_user, source=ChangeSource.WORKBENCH,
        )  # fmt: skip
    [conflict] = caught.value.conflicts
    assert (conflict.image_id, conflict.label, conflict.version, conflict.changed_by) == (first, "red", 1, "alice")
    assert "changed to red by alice" in str(caught.value)
    assert _label(first) == "red" and _label(second) is None  # the good edit was not applied either
    assert LabelChange.objects.count() == 1


def test_unknown_images_and_other_datasets_images_are_refused(small, admin_user):
    other = dataset_create(name="other")
    images_add(dataset=other, items=[("x.png", colour_image("red", seed=999), "red")])
    [foreign] = _ids(other)
    with pytest.raises(ValueError, match=f"No image {foreign}"):
        images_label_set(dataset=small, edits=[LabelEdit(foreign, "red", 0)], user=admin_user, source="api")
    with pytest.raises(ValueError, match="1 to 200 characters"):
        images_label_set(dataset=small, edits=[LabelEdit(_ids(small)[0], "x" * 201)], user=admin_user, source="api")
    assert not LabelChange.objects.exists()


def test_undo_reverts_the_users_last_batch_then_the_one_before(small, admin_user):
    a, b, c = _ids(small, label__isnull=True)[:3]
    images_label_set(dataset=small, edits=[LabelEdit(a, "red", 0)], user=admin_user, source="workbench")
    images_label_set(
        dataset=small, edits=[LabelEdit(b, "green", 0), LabelEdit(c, "green", 0)], user=admin_user, source="workbench"
    )
    undone = label_change_undo(dataset=small, user=admin_user)
    assert {i.id for i in undone.images} == {b, c}
    assert (_label(a), _label(b), _label(c)) == ("red", None, None)
    label_change_undo(dataset=small, user=admin_user)
    assert _label(a) is None
    with pytest.raises(ValueError, match="Nothing to undo"):
        label_change_undo(dataset=small, user=admin_user)
    assert LabelChange.objects.filter(source=ChangeSource.UNDO).count() == 3


def test_undo_never_overwrites_a_colleagues_later_change_and_never_sticks(small, admin_user, django_user_model):
    alice = django_user_model.objects.create_user("alice", password="x")
    a, b, c = _ids(small, label__isnull=True)[:3]
    images_label_set(dataset=small, edits=[LabelEdit(c, "blue", 0)], user=admin_user, source="workbench")
    images_label_set(dataset=small, edits=[LabelEdit(a, "red", 0), LabelEdit(b, "red", 0)], user=admin_user,
                     source="workbench")  # fmt: skip
    images_label_set(dataset=small, edits=[LabelEdit(a, "green", 1)], user=alice, source="workbench")
    undone = label_change_undo(dataset=small, user=admin_user)  # b is reverted, a keeps alice's label
    assert [i.id for i in undone.images] == [b] and [(k.image_id, k.changed_by) for k in undone.kept] == [(a, "alice")]
    assert (_label(a), _label(b)) == ("green", None)
    images_label_set(dataset=small, edits=[LabelEdit(c, "green", 1)], user=alice, source="workbench")
    with pytest.raises(LabelConflict, match=r"Not undone: image .* changed to green by alice"):
        label_change_undo(dataset=small, user=admin_user)  # c's only change is overwritten
    assert _label(c) == "green"
    with pytest.raises(ValueError, match="Nothing to undo"):  # not stuck on that batch: it is no longer in effect
        label_change_undo(dataset=small, user=admin_user)


def test_undo_twice_on_the_same_image_walks_back_and_restores_the_review_flags(small, admin_user):
    [red] = _ids(small, label__name="red")[:1]
    Image.objects.filter(pk=red).update(needs_review=True)
    images_label_set(dataset=small, edits=[LabelEdit(red, "green", 0)], user=admin_user, source="review")
    images_label_set(dataset=small, edits=[LabelEdit(red, "blue", 1)], user=admin_user, source="workbench")
    label_change_undo(dataset=small, user=admin_user)
    assert _label(red) == "green"
    label_change_undo(dataset=small, user=admin_user)
    image = Image.objects.get(pk=red)
    assert (image.label.name, image.needs_review, image.label_checked) == ("red", True, False)  # back in the queue
    assert red in set(workbench_images(dataset=small, show="review").values_list("pk", flat=True))


def test_undo_follows_a_renamed_class_and_leaves_images_of_a_deleted_one(small, admin_user):
    from datasets.services import label_rename

    a, b = _ids(small, label__name="red")
    images_label_set(dataset=small, edits=[LabelEdit(a, "green", 0)], user=admin_user, source="workbench")
    label_rename(label=small.labels.get(name="red"), name="crimson")
    label_change_undo(dataset=small, user=admin_user)
    assert _label(a) == "crimson" and not small.labels.filter(name="red").exists()
    images_label_set(dataset=small, edits=[LabelEdit(b, "green", 0)], user=admin_user, source="workbench")
    label_delete(label=small.labels.get(name="crimson"), user=admin_user)  # a is unlabelled by the deletion
    with pytest.raises(LabelConflict):
        label_change_undo(dataset=small, user=admin_user)  # the deletion's own batch is in effect: not undone
    assert not small.labels.filter(name="crimson").exists()


def test_merge_and_delete_move_versions_on_and_write_history(small, admin_user):
    red, green = small.labels.get(name="red"), small.labels.get(name="green")
    a = _ids(small, label=red)[0]
    label_merge(source=red, target=green, user=admin_user)
    assert (_label(a), Image.objects.get(pk=a).label_version) == ("green", 1)
    assert LabelChange.objects.get(image_id=a).source == "class"
    with pytest.raises(LabelConflict):  # a page that still shows "red" at version 0
        images_label_set(dataset=small, edits=[LabelEdit(a, "blue", 0)], user=admin_user, source="workbench")
    assert label_delete(label=green, user=admin_user) == 4
    assert _label(a) is None and LabelChange.objects.filter(source="class").count() == 6


def _suggest(pk: int, name: str, confidence: float, margin: float = 0.1, entropy: float = 1.0) -> None:
    Image.objects.filter(pk=pk).update(
        suggestion=name, suggestion_confidence=confidence, suggestion_margin=margin, suggestion_entropy=entropy
    )


def test_accept_suggestions_above_a_confidence_in_the_current_filter(small, admin_user):
    a, b, c, d = _ids(small, label__isnull=True)
    _suggest(a, "blue", 0.95)
    _suggest(b, "blue", 0.91)
    _suggest(c, "blue", 0.60)
    labelled = _ids(small, label__name="red")[0]
    _suggest(labelled, "green", 0.99)
    result = suggestions_accept(
        dataset=small, images=workbench_images(dataset=small, show="unlabelled"), min_confidence=0.9, user=admin_user
    )
    assert sorted(i.id for i in result.images) == [a, b]
    assert [_label(x) for x in (a, b, c, d, labelled)] == ["blue", "blue", None, None, "red"]
    assert set(LabelChange.objects.values_list("source", flat=True)) == {"suggestion"}
    label_change_undo(dataset=small, user=admin_user)  # one batch: one undo
    assert _label(a) is None and _label(b) is None
    with pytest.raises(ValueError, match="between 0 and 100%"):
        suggestions_accept(dataset=small, images=workbench_images(dataset=small), min_confidence=90, user=admin_user)


def test_workbench_filters_and_active_learning_orders(small, admin_user):
    a, b, c, d = _ids(small, label__isnull=True)
    _suggest(a, "blue", 0.40, margin=0.30, entropy=0.9)
    _suggest(b, "blue", 0.70, margin=0.05, entropy=1.5)
    _suggest(c, "blue", 0.30, margin=0.20, entropy=0.2)
    red1, red2 = _ids(small, label__name="red")
    _suggest(red1, "green", 0.95)  # an unchecked label the model confidently contradicts
    _suggest(red2, "green", 0.60)  # a disagreement, but not a confident one

    def shown(**kw: str) -> list[int]:
        return list(workbench_images(dataset=small, **kw).values_list("pk", flat=True))

    assert shown(show="low") == [a, c]
    assert shown(show="unlabelled", order="least_confidence") == [c, a, b, d]  # unscored last
    assert shown(show="unlabelled", order="margin") == [b, c, a, d]
    assert shown(show="unlabelled", order="entropy") == [b, a, c, d]
    assert shown(show="disagree") == [red1, red2]
    assert shown(show="review") == [red1]
    assert shown(show="bogus", order="bogus") == _ids(small)
    # Confirming the label (setting it to itself) takes it out of the review queue.
    images_label_set(dataset=small, edits=[LabelEdit(red1, "red", 0)], user=admin_user, source="review")
    assert shown(show="review") == []
    assert shown(show="disagree") == [red1, red2]


def test_concurrent_changes_from_the_same_version_one_wins(transactional_db, admin_user, django_user_model):
    """Two admins press a key on the same image at once: exactly one change lands."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers; the PostgreSQL run checks the race")
    dataset = dataset_create(name="race")
    images_add(dataset=dataset, items=[("r.png", colour_image("red", seed=1), None)])
    [pk] = _ids(dataset)
    outcomes: list[str] = []

    def press(name: str) -> None:
        try:
            images_label_set(dataset=dataset, edits=[LabelEdit(pk, name, 0)], user=admin_user, source="workbench")
            outcomes.append("saved")
        except LabelConflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [threading.Thread(target=press, args=(n,)) for n in ("red", "green", "blue", "red")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "saved"]
    assert Image.objects.get(pk=pk).label_version == 1
    assert LabelChange.objects.count() == 1


def test_correction_records_who_labelled_the_new_image(small, admin_user):
    data = colour_image("green", seed=4242)
    assert "Added g.png" in image_add_correction(
        dataset=small, filename="g.png", data=data, label_name="green", user=admin_user
    )
    [change] = LabelChange.objects.all()
    assert (change.new_label, change.source, change.user) == ("green", "correction", admin_user)
    assert "already in small" in image_add_correction(
        dataset=small, filename="g.png", data=data, label_name="red", user=admin_user
    )
    assert LabelChange.objects.count() == 2


# --- the API ------------------------------------------------------------------------------


def test_api_bulk_label_then_409_on_a_stale_version(api, small):
    a, b = _ids(small, label__isnull=True)[:2]
    url = f"/api/v1/datasets/{small.pk}/label/"
    ok = api.post(url, {"changes": [{"image": a, "label": "blue", "version": 0},
                                    {"image": b, "label": None, "version": 0}]}, format="json")  # fmt: skip
    assert ok.status_code == 200, ok.content
    assert {(i["id"], i["label"], i["version"]) for i in ok.json()["images"]} == {(a, "blue", 1), (b, None, 1)}
    stale = api.post(url, {"changes": [{"image": a, "label": "red", "version": 0}]}, format="json")
    assert stale.status_code == 409
    body = stale.json()
    assert body["conflicts"][0] == {**body["conflicts"][0], "image": a, "label": "blue", "version": 1,
                                    "changed_by": "admin"}  # fmt: skip
    assert "Nothing in this change was applied" in body["detail"]
    assert _label(a) == "blue"
    history = api.get(f"/api/v1/label-changes/?image={a}").json()
    assert [(h["old_label"], h["new_label"], h["user"]) for h in history["results"]] == [("", "blue", "admin")]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"changes": []}, "changes"),
        ({"changes": [{"image": 10**9, "label": "x", "version": 0}]}, "No image"),
        ({"changes": [{"image": 1, "label": "x", "version": -1}]}, "version"),
        ({"changes": "nope"}, "changes"),
        ({"changes": [{"label": "x"}]}, "image"),
    ],
)
def test_api_bad_label_requests_get_400(api, small, payload, message):
    response = api.post(f"/api/v1/datasets/{small.pk}/label/", payload, format="json")
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not LabelChange.objects.exists()


def test_api_undo_and_accept_suggestions(api, small):
    a, b = _ids(small, label__isnull=True)[:2]
    _suggest(a, "blue", 0.97)
    _suggest(b, "blue", 0.50)
    accepted = api.post(f"/api/v1/datasets/{small.pk}/accept-suggestions/", {"min_confidence": 0.9}, format="json")
    assert accepted.status_code == 200 and accepted.json()["accepted"] == 1
    assert _label(a) == "blue"
    undone = api.post(f"/api/v1/datasets/{small.pk}/undo/")
    assert undone.status_code == 200 and undone.json()["images"] == [{"id": a, "label": None, "version": 2}]
    nothing = api.post(f"/api/v1/datasets/{small.pk}/undo/")
    assert nothing.status_code == 400 and nothing.json()["detail"] == "Nothing to undo."
    bad = api.post(f"/api/v1/datasets/{small.pk}/accept-suggestions/", {"min_confidence": 90}, format="json")
    assert bad.status_code == 400


def test_api_image_patch_goes_through_the_lock_and_history(api, small):
    [a] = _ids(small, label__isnull=True)[:1]
    red = small.labels.get(name="red")
    ok = api.patch(f"/api/v1/images/{a}/", {"label": red.pk, "label_version": 0}, format="json")
    assert ok.status_code == 200 and ok.json()["label_version"] == 1
    stale = api.patch(f"/api/v1/images/{a}/", {"label": None, "label_version": 0}, format="json")
    assert stale.status_code == 409 and _label(a) == "red"
    assert LabelChange.objects.get().source == "api"
    review = api.patch(f"/api/v1/images/{a}/", {"needs_review": True}, format="json")
    assert review.status_code == 200 and review.json()["needs_review"] is True
    ordered = api.get(f"/api/v1/images/?dataset={small.pk}&order=least_confidence")
    assert ordered.status_code == 200


@pytest.mark.parametrize("path", ["label/", "undo/", "accept-suggestions/"])
def test_labelling_endpoints_are_for_admins_only(member, small, path):
    client = APIClient()
    url = f"/api/v1/datasets/{small.pk}/{path}"
    assert client.post(url, {}, format="json").status_code in (401, 403)
    client.force_authenticate(member)
    assert client.post(url, {}, format="json").status_code == 403
    assert client.get("/api/v1/label-changes/").status_code == 403


def test_django_admin_shows_history_read_only_and_never_edits_labels(admin_client, small, admin_user):
    [a] = _ids(small, label__isnull=True)[:1]
    images_label_set(dataset=small, edits=[LabelEdit(a, "blue", 0)], user=admin_user, source="workbench")
    assert "blue" in admin_client.get("/admin/datasets/labelchange/").content.decode()
    assert admin_client.get("/admin/datasets/labelchange/add/").status_code == 403
    assert admin_client.get("/admin/classification/scoringrun/").status_code == 200
    page = admin_client.get(f"/admin/datasets/image/{a}/change/").content.decode()
    assert 'name="label"' not in page and "blue" in page


def test_a_key_press_counts_nothing_and_costs_a_few_queries(api, small):
    """No count of the dataset's images on the way (the viewset's list queryset has them):
    on 60,000 images that count was most of a key press's time."""
    from django.test.utils import CaptureQueriesContext

    [a] = _ids(small, label__isnull=True)[:1]
    url = f"/api/v1/datasets/{small.pk}/label/"
    with CaptureQueriesContext(connection) as queries:
        response = api.post(url, {"changes": [{"image": a, "label": "red", "version": 0}]}, format="json")
    assert response.status_code == 200
    assert len(queries) <= 8, [q["sql"] for q in queries]
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    missing = api.post("/api/v1/datasets/999999/label/", {"changes": [{"image": a, "label": "red"}]}, format="json")
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "body, message",
    [
        ({"min_confidence": 0.9, "label_id": "red"}, "valid integer"),  # a class name is not a class id
        ({"min_confidence": 0.9, "label": "red"}, "Unknown field"),  # nor a filter it does not know
        ({"min_confidence": 0.9, "split": "validation"}, "not a valid choice"),
        ({"min_confidence": 0.9, "label_id": 10**6}, "No class with id 1000000"),
        ({"min_confidence": 0.9, "show": "everything"}, "not a valid choice"),
    ],
)
def test_accept_suggestions_refuses_a_filter_it_does_not_understand(api, small, body, message):
    """A mistyped filter must never widen a bulk write to the whole dataset."""
    for pk in _ids(small):
        _suggest(pk, "blue", 0.99)
    response = api.post(f"/api/v1/datasets/{small.pk}/accept-suggestions/", body, format="json")
    assert response.status_code == 400 and message in response.content.decode()
    assert not LabelChange.objects.exists()
    red = small.labels.get(name="red")
    expected = len(_ids(small, label=red, split="train"))
    ok = api.post(f"/api/v1/datasets/{small.pk}/accept-suggestions/", {"min_confidence": 0.9, "label_id": red.pk,
                                                                         "split": "train"}, format="json")  # fmt: skip
    assert ok.json()["accepted"] == expected


@pytest.mark.parametrize(
    "url, body",
    [
        ("/api/v1/datasets/²/label/", {"changes": [{"image": 1, "label": "x"}]}),
        ("/api/v1/datasets/²/accept-suggestions/", {"min_confidence": 0.9}),
        ("/api/v1/datasets/99999999999999999999999/undo/", {}),
    ],
)
def test_odd_dataset_ids_are_404_never_500(api, small, url, body):
    assert api.post(url, body, format="json").status_code == 404


def test_bad_label_requests_never_500(api, small, admin_client):
    url = f"/api/v1/datasets/{small.pk}/label/"
    [a] = _ids(small, label__isnull=True)[:1]
    huge = api.post(url, {"changes": [{"image": 10**30, "label": "x"}]}, format="json")
    assert huge.status_code == 400 and "less than or equal to" in huge.content.decode()
    blank = api.post(url, {"changes": [{"image": a, "label": "   ", "version": 0}]}, format="json")
    assert blank.status_code == 400 and "1 to 200 characters" in blank.json()["detail"]
    assert _label(a) is None
    for query in ("?label=²", "?label=99999999999999999999999", "?page=²&split=²&order=²&show=²"):
        assert admin_client.get(f"/datasets/{small.pk}/label/{query}").status_code == 200


def test_a_conflict_on_a_deleted_image_says_so(api, small):
    from datasets.services import images_delete

    [a] = _ids(small, label__isnull=True)[:1]
    images_delete(dataset=small, ids=[a])
    response = api.post(f"/api/v1/datasets/{small.pk}/label/", {"changes": [{"image": a, "label": "x"}]}, format="json")
    assert response.status_code == 400 and f"No image {a}" in response.json()["detail"]


def test_opposite_orders_never_deadlock(transactional_db, admin_user):
    """Two batches over the same images in opposite orders: rows are locked in id order,
    so each ends saved or as a clean 409, never a database deadlock error."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers; the PostgreSQL run checks the locking")
    dataset = dataset_create(name="order")
    images_add(dataset=dataset, items=[(f"{i}.png", colour_image("red", seed=i), None) for i in range(40)])
    ids = _ids(dataset)
    errors: list[Exception] = []

    def run(order: list[int], name: str) -> None:
        try:
            for _ in range(5):
                edits = [LabelEdit(pk, name) for pk in order]  # no version: server-side decisions
                images_label_set(dataset=dataset, edits=edits, user=admin_user, source="api")
        except Exception as exc:  # a deadlock would surface here
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(ids, "red")), threading.Thread(target=run, args=(ids[::-1], "blue"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert LabelChange.objects.count() == 10 * len(ids)
