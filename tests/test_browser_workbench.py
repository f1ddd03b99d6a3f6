"""The labelling workbench in Debian's Chromium: keyboard labelling, undo, ranges and
bulk assignment, new classes, accepted suggestions, and a conflict between two sessions."""

import os
import shutil
from pathlib import Path

import pytest

from datasets.models import Dataset, Image, Label, LabelChange
from datasets.services import dataset_create, images_add
from tests.images import colour_items

pytestmark = pytest.mark.browser

CLASSES = ["blue", "green", "red"]  # keys 1, 2 and 3


@pytest.fixture
def unlabelled(transactional_db: None) -> Dataset:
    """30 unlabelled images and three empty classes."""
    dataset = dataset_create(name="to label")
    images_add(dataset=dataset, items=[(name, data, None) for name, data, _ in colour_items(10)])
    for name in CLASSES:
        Label.objects.create(dataset=dataset, name=name)
    return dataset


def _ids(dataset: Dataset) -> list[int]:
    return list(Image.objects.filter(dataset=dataset).order_by("id").values_list("pk", flat=True))


def _labels(ids: list[int]) -> list[str | None]:
    names = dict(Image.objects.filter(pk__in=ids).values_list("pk", "label__name"))
    return [names[pk] for pk in ids]


def _open(browser, live_server, dataset: Dataset, username: str = "admin", password: str = "password", query=""):
    """A new browser context logged in as `username`, on the dataset's workbench."""
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/label/{query}")
    page.wait_for_function("() => document.activeElement.classList.contains('wb-tile')")
    return page


def _settled(page) -> None:
    """Every change the page sent has been answered."""
    page.wait_for_function("() => document.getElementById('wb-grid').dataset.pending === '0'")


def _screenshot(page, tmp_path: Path, name: str) -> None:
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if shots := os.environ.get("SCREENSHOT_DIR"):
        shutil.copy(tmp_path / name, Path(shots) / name)


def _focused(page) -> int:
    return int(page.evaluate("() => document.activeElement.dataset.id"))


def test_label_twenty_images_with_the_keyboard_then_undo(live_server, admin_user, unlabelled, browser):
    ids = _ids(unlabelled)
    page = _open(browser, live_server, unlabelled)
    assert _focused(page) == ids[0]
    columns = page.evaluate("() => { const t = [...document.querySelectorAll('.wb-tile')];"
                            " return t.filter(x => x.offsetTop === t[0].offsetTop).length; }")  # fmt: skip
    page.keyboard.press("ArrowRight")
    assert _focused(page) == ids[1]
    page.keyboard.press("ArrowDown")
    assert _focused(page) == ids[1 + columns]
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    assert _focused(page) == ids[0]

    wanted = [CLASSES[i % 3] for i in range(20)]
    for name in wanted:
        page.keyboard.press(str(CLASSES.index(name) + 1))  # each key labels, then moves on
    _settled(page)
    assert _focused(page) == ids[20]
    assert _labels(ids[:20]) == wanted and _labels(ids[20:]) == [None] * 10
    changes = LabelChange.objects.filter(dataset=unlabelled, user=admin_user, source="workbench")
    assert sorted(changes.values_list("image_id", flat=True)) == ids[:20]
    assert "Saved: 1 image \u2192 green" in page.inner_text("#wb-status")
    assert page.inner_text("#wb-labelled") == "20"
    assert page.locator(f".wb-tile[data-id='{ids[19]}'] .wb-label").inner_text() == "green"

    page.keyboard.press("Control+z")
    _settled(page)
    assert "Undone" in page.inner_text("#wb-status")
    assert _labels(ids[:20]) == [*wanted[:19], None]
    assert page.locator(f".wb-tile[data-id='{ids[19]}'] .wb-label").inner_text() == "unlabelled"
    assert page.inner_text("#wb-labelled") == "19"

    # The undone image labelled again, and Delete unlabels what is focused.
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("3")
    _settled(page)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Delete")
    _settled(page)
    assert _labels(ids[19:20]) == [None]
    assert page.locator(f".wb-tile[data-id='{ids[19]}']").get_attribute("data-version") == "4"


def test_shift_click_a_range_and_assign_it(live_server, admin_user, unlabelled, browser):
    ids = _ids(unlabelled)
    page = _open(browser, live_server, unlabelled)
    page.click(f".wb-tile[data-id='{ids[2]}']")
    page.click(f".wb-tile[data-id='{ids[6]}']", modifiers=["Shift"])
    page.click(f".wb-tile[data-id='{ids[9]}']", modifiers=["Control"])
    selected = page.locator(".wb-tile[aria-selected=true]").evaluate_all("t => t.map(x => +x.dataset.id)")
    assert selected == [*ids[2:7], ids[9]]
    page.select_option("#wb-class", "green")
    page.click("#wb-assign")
    _settled(page)
    assert _labels(ids[:11]) == [None, None, *["green"] * 5, None, None, "green", None]
    assert page.locator(".wb-tile[aria-selected=true]").count() == 0
    assert len({c.batch for c in LabelChange.objects.filter(dataset=unlabelled)}) == 1  # one batch, one undo

    # Space selects from the keyboard too; a number key labels the whole selection.
    page.keyboard.press("Space")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    assert _focused(page) == ids[11]  # focus went past the labelled selection, to 10, then right
    page.keyboard.press("1")
    _settled(page)
    assert _labels(ids[10:12]) == ["blue", "blue"]


def test_a_new_class_on_the_fly(live_server, admin_user, unlabelled, browser):
    ids = _ids(unlabelled)
    page = _open(browser, live_server, unlabelled)
    page.click(f".wb-tile[data-id='{ids[4]}']")
    page.fill("#wb-new-class", "cat 2")  # typing digits in a field is not a shortcut
    page.click("#wb-new-class-add")
    _settled(page)
    assert _labels(ids[:6]) == [None, None, None, None, "cat 2", None]
    assert LabelChange.objects.count() == 1
    assert "4 cat 2" in page.inner_text("#wb-keys")  # the next free key
    assert _focused(page) == ids[5]
    page.keyboard.press("4")
    _settled(page)
    assert _labels([ids[5]]) == ["cat 2"]
    assert "cat 2" in page.locator("#wb-class").inner_text()
    assert page.locator("#wb-class-counts tr[data-class='cat 2'] .wb-count").inner_text() == "2"


def test_accept_suggestions(live_server, admin_user, unlabelled, browser, tmp_path):
    ids = _ids(unlabelled)
    confident = ids[:5]
    Image.objects.filter(pk__in=confident).update(suggestion="red", suggestion_confidence=0.95)
    Image.objects.filter(pk__in=ids[5:10]).update(suggestion="blue", suggestion_confidence=0.6)
    Image.objects.filter(pk=ids[10]).update(suggestion="zebra", suggestion_confidence=0.3)
    blue = Label.objects.get(dataset=unlabelled, name="blue")
    Image.objects.filter(pk=ids[29]).update(label=blue, suggestion="red", suggestion_confidence=0.99)
    page = _open(browser, live_server, unlabelled, query="?show=unlabelled")
    assert "model: red 95%" in page.inner_text(f".wb-tile[data-id='{ids[0]}']")

    page.click("#wb-accept")  # at the default 90%, for the current filter only
    page.wait_for_function("() => document.getElementById('wb-status').textContent.includes('Accepted 5')")
    assert _labels([*ids[:11], ids[29]]) == ["red"] * 5 + [None] * 6 + ["blue"]
    assert page.locator(".wb-tile").count() == 24  # reloaded: the five are no longer unlabelled

    # Enter accepts the focused image's suggestion whatever its confidence, even a new class.
    page.click(f".wb-tile[data-id='{ids[10]}']")
    page.keyboard.press("Enter")
    _settled(page)
    assert _labels([ids[10]]) == ["zebra"]
    _screenshot(page, tmp_path, "workbench.png")

    page.fill("#wb-min-confidence", "50")
    page.click("#wb-accept")
    page.wait_for_function("() => document.getElementById('wb-status').textContent.includes('Accepted 5')")
    assert _labels(ids[5:10]) == ["blue"] * 5


def test_a_stale_change_shows_the_conflict_and_overwrites_nothing(
    live_server,
    admin_user,
    django_user_model,
    unlabelled,
    browser,
    tmp_path,
):
    django_user_model.objects.create_superuser("alice", "alice@example.com", "alice-pass-123")
    ids = _ids(unlabelled)
    mine = _open(browser, live_server, unlabelled)
    alices = _open(browser, live_server, unlabelled, username="alice", password="alice-pass-123")
    alices.keyboard.press("3")  # alice labels the first image red
    _settled(alices)
    assert _labels([ids[0]]) == ["red"]

    mine.keyboard.press("2")  # my page still shows it unlabelled, at version 0
    _settled(mine)
    status = mine.inner_text("#wb-status")
    assert f"Not saved: image {ids[0]} was changed to red by alice" in status
    assert _labels([ids[0]]) == ["red"]  # nothing overwritten
    tile = mine.locator(f".wb-tile[data-id='{ids[0]}']")
    assert "wb-conflict" in tile.get_attribute("class")
    assert tile.locator(".wb-label").inner_text() == "red"
    _screenshot(mine, tmp_path, "workbench-conflict.png")

    # The page now holds alice's version: a deliberate second try goes through.
    mine.keyboard.press("ArrowLeft")
    mine.keyboard.press("2")
    _settled(mine)
    assert _labels([ids[0]]) == ["green"]
    assert "wb-conflict" not in tile.get_attribute("class")


def test_a_key_pressed_before_the_conflict_arrived_is_dropped(live_server, admin_user, django_user_model, unlabelled,
                                                              browser):  # fmt: skip
    """Two quick presses on a tile a colleague changed: the first gets 409; the second,
    queued behind it, must not go out with the version the 409 brought (the person
    never saw the colleague's label)."""
    from datasets.labelling import LabelEdit, images_label_set

    alice = django_user_model.objects.create_superuser("alice", "alice@example.com", "alice-pass-123")
    ids = _ids(unlabelled)
    page = _open(browser, live_server, unlabelled)
    images_label_set(dataset=unlabelled, edits=[LabelEdit(ids[0], "red", 0)], user=alice, source="workbench")
    held: list = []
    page.route("**/label/", lambda route: route.continue_() if held else held.append(route))  # hold the first
    page.keyboard.press("1")
    page.wait_for_function("() => document.getElementById('wb-grid').dataset.pending === '1'")
    page.keyboard.press("Home")
    assert _focused(page) == ids[0]
    page.keyboard.press("2")  # queued behind the held request, on the same tile
    page.wait_for_function("() => document.getElementById('wb-grid').dataset.pending === '2'")
    assert len(held) == 1
    held[0].continue_()
    _settled(page)
    assert _labels([ids[0]]) == ["red"]  # neither press overwrote alice's label
    assert LabelChange.objects.filter(image_id=ids[0]).count() == 1
    assert "wb-conflict" in page.locator(f".wb-tile[data-id='{ids[0]}']").get_attribute("class")
    assert "changed to red by alice" in page.inner_text("#wb-status")


def test_next_page_after_labelling_the_unlabelled_skips_nothing(live_server, admin_user, unlabelled, browser,
                                                                 monkeypatch):  # fmt: skip
    """Labelled images leave the "unlabelled" filter: PageDown must show the very next
    unlabelled images, not page 2 of what is left (which would skip six)."""
    monkeypatch.setattr("datasets.workbench_views.WORKBENCH_PAGE_SIZE", 6)
    ids = _ids(unlabelled)
    page = _open(browser, live_server, unlabelled, query="?show=unlabelled")
    for _ in range(6):
        page.keyboard.press("1")
    _settled(page)
    page.wait_for_function("() => document.getElementById('wb-status').textContent.includes('Page done')")
    page.keyboard.press("PageDown")
    page.wait_for_function(f"() => document.querySelector('.wb-tile').dataset.id === '{ids[6]}'")
    shown = page.evaluate("() => [...document.querySelectorAll('.wb-tile')].map(t => +t.dataset.id)")
    assert shown == ids[6:12]
    assert _labels(ids[:6]) == ["blue"] * 6
    page.keyboard.press("PageDown")  # nothing saved on this page yet: the pager's next page
    page.wait_for_url("**page=2**")
    assert page.evaluate("() => +document.querySelector('.wb-tile').dataset.id") == ids[12]
