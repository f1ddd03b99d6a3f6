"""Data quality in Debian's Chromium: keep one image of a near-duplicate group and see the
split counts change; "more like this" from the workbench, then three similar images
labelled at once."""

import pytest

from datasets.models import Image
from tests.test_data_quality import analysed, named, pixels, plant  # noqa: F401  (pixels: the fixture)

pytestmark = pytest.mark.browser


def _login(browser, live_server):
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "password")
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{live_server.url}/")
    return page


def _totals(page) -> dict[str, int]:
    spans = page.locator("#split-totals span").all()
    return {s.get_attribute("data-split"): int(s.inner_text().split()[0]) for s in spans}


@pytest.fixture
def planted_db(transactional_db, pixels):  # noqa: F811
    return plant()  # on a database the live server sees


def test_keep_one_image_of_a_leaking_group_and_see_the_split_counts_change(live_server, admin_user, planted_db,
                                                                           browser):  # fmt: skip
    analysed(planted_db)
    page = _login(browser, live_server)
    page.goto(f"{live_server.url}/quality/datasets/{planted_db.pk}/")
    before = _totals(page)
    leak = page.locator(".duplicate-group", has_text="leak")
    assert leak.locator(".split-count").all_inner_texts() == ["1 test", "1 train"]
    leak.locator(".wb-tile", has_text="· test").get_by_role("button", name="Keep only this").click()
    page.wait_for_selector("text=Kept one image of the group; deleted 1.")
    assert _totals(page) == {**before, "train": before["train"] - 1}
    assert page.locator(".duplicate-group", has_text="leak").count() == 0
    assert not Image.objects.filter(dataset=planted_db, original_name="red-0.png").exists()  # the train copy went


def test_more_like_this_from_the_workbench_labels_three_similar_images_at_once(live_server, admin_user, planted_db,
                                                                               browser):  # fmt: skip
    unsure = [f"red-{i}.png" for i in range(8, 16)]
    Image.objects.filter(dataset=planted_db, original_name__in=unsure).update(label=None)
    analysed(planted_db)
    red = named(planted_db, "red-8.png")
    page = _login(browser, live_server)
    page.goto(f"{live_server.url}/datasets/{planted_db.pk}/label/?show=unlabelled")
    page.locator(f'.wb-tile[data-id="{red.pk}"] a.wb-similar').click()
    page.wait_for_selector("#wb-similar-note")
    tiles = page.locator(".wb-tile")
    assert tiles.first.get_attribute("data-id") == str(red.pk)
    chosen = [int(tiles.nth(i).get_attribute("data-id")) for i in (1, 2, 3)]
    tiles.nth(1).click()
    tiles.nth(3).click(modifiers=["Shift"])
    page.select_option("#wb-class", "red")
    page.click("#wb-assign")
    page.wait_for_function("() => document.getElementById('wb-grid').dataset.pending === '0'")
    labels = dict(Image.objects.filter(pk__in=chosen, label_checked=True).values_list("pk", "label__name"))
    assert [labels.get(pk) for pk in chosen] == ["red", "red", "red"]


def test_where_the_evaluated_model_looked_is_drawn_when_asked_for(live_server, admin_user, transactional_db,
                                                                  browser):  # fmt: skip
    from datasets.services import dataset_create, images_add
    from tests.conftest import train_now
    from tests.images import colour_items

    dataset = dataset_create(name="colours")
    images_add(dataset=dataset, items=colour_items(40))
    evaluation = train_now(dataset).evaluations.get()
    page = _login(browser, live_server)
    page.goto(f"{live_server.url}/evaluations/{evaluation.pk}/")
    first = page.locator("details.explain").first
    assert first.locator("img").count() == 0  # nothing drawn, nothing asked of the server, until opened
    first.locator("summary").click()
    page.wait_for_function("() => { const i = document.querySelector('details.explain[open] img');"
                           " return i && i.complete && i.naturalWidth > 0; }")  # fmt: skip


def test_the_drift_panel_draws_confidence_and_class_mix_per_day(live_server, admin_user, transactional_db,
                                                                browser):  # fmt: skip
    """Three days of live answers, confidence falling and the mix moving to "blue": one point
    a day on the confidence chart, one stacked bar a day on the mix chart."""
    from datetime import timedelta

    from django.utils import timezone

    from classification.models import LivePrediction
    from datasets.services import dataset_create

    dataset = dataset_create(name="live colours")
    for day, (confidence, blue) in enumerate([(0.95, 1), (0.8, 2), (0.6, 3)]):
        for n in range(4):
            row = LivePrediction.objects.create(dataset=dataset, label="blue" if n < blue else "red",
                                                confidence=confidence, unknown=confidence < 0.7, weight=1)  # fmt: skip
            LivePrediction.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=2 - day))
    page = _login(browser, live_server)
    page.goto(f"{live_server.url}/predict/live/{dataset.pk}/")
    page.wait_for_function("() => window.driftCharts && window.driftCharts.length === 2")
    confidence = page.evaluate("window.driftCharts[0].data.datasets[0].data")
    mix = page.evaluate("Object.fromEntries(window.driftCharts[1].data.datasets.map(d => [d.label, d.data]))")
    assert confidence == [0.95, 0.8, 0.6]
    assert mix == {"blue": [0.25, 0.5, 0.75], "red": [0.75, 0.5, 0.25]}
    assert page.locator("#drift-confidence").bounding_box()["height"] > 100  # drawn, not collapsed
