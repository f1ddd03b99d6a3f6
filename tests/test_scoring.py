"""Model assistance: a dataset's live model scores every image of a dataset (suggestion,
confidence, margin, entropy), through the service, the task, the command, the API
and the page endpoint."""

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.utils import timezone
from rest_framework.test import APIClient

from classification.models import ScoringRun
from classification.scoring import services as scoring
from classification.scoring.selectors import scoring_latest
from classification.scoring.services import ScoringRefused, scoring_run, scoring_start
from datasets.imaging import load_array
from datasets.models import Dataset, Image
from datasets.services import dataset_create
from tests.conftest import model_version_row
from trainer.ml.inference import scores
from trainer.models import ModelVersion


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def promoted_row(colour_dataset: Dataset) -> ModelVersion:
    """A promoted version with no file behind it: enough to queue runs, not to score."""
    version = model_version_row(colour_dataset)
    ModelVersion.objects.filter(pk=version.pk).update(is_promoted=True, promoted_at=timezone.now())
    version.refresh_from_db()
    return version


# --- the numbers ------------------------------------------------------------------------


def test_scores_are_top_class_confidence_margin_and_entropy_in_nats():
    found = scores(np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]))
    assert found.top.tolist() == [0, 1, 0]
    np.testing.assert_allclose(found.confidence, [0.7, 1.0, 0.5])
    np.testing.assert_allclose(found.margin, [0.5, 1.0, 0.0])
    expected = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(found.entropy, [expected, 0.0, np.log(2)])  # a zero adds nothing, not NaN


def test_scores_of_a_one_class_model_and_of_bad_shapes():
    found = scores(np.array([[1.0], [1.0]], dtype=np.float32))
    assert found.margin.tolist() == [1.0, 1.0] and found.entropy.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        scores(np.array([0.5, 0.5]))


# --- a real model ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_run_writes_what_the_model_answers_for_every_image_and_skips_unreadable_files(trained_version, monkeypatch):
    from trainer.ml.export import load_model
    from trainer.registry.files import local_model_file

    dataset = trained_version.dataset
    images = list(Image.objects.filter(dataset=dataset).order_by("pk"))
    corrupt, missing = images[3], images[60]
    Path(settings.MEDIA_ROOT, corrupt.file.name).write_bytes(b"not an image at all")
    default_storage.delete(missing.file.name)
    Image.objects.filter(pk=corrupt.pk).update(suggestion="red", suggestion_confidence=0.9)  # from an older run
    monkeypatch.setattr(scoring, "BATCH", 50)
    seen: list[int] = []
    batch_once = scoring._score_batch

    def recording(run, batch, predict):
        batch_once(run, batch, predict)
        seen.append(ScoringRun.objects.get(pk=run.pk).processed)

    monkeypatch.setattr(scoring, "_score_batch", recording)

    run = scoring_run(run_id=scoring_start(dataset=dataset, enqueue=False).pk)

    assert run.status == "succeeded" and run.progress == 1.0 and run.is_finished, run.error
    assert (run.total, run.processed, run.skipped) == (120, 120, 2) and seen == [50, 100, 120]
    assert run.started_at <= run.finished_at and run.model_version == trained_version
    assert scoring_latest(dataset=dataset) == run
    model = load_model(local_model_file(trained_version))
    rows = {i.pk: i for i in Image.objects.filter(dataset=dataset)}
    readable = [i for i in images if i.pk not in (corrupt.pk, missing.pk)]
    pixels = np.stack(
        [load_array(default_storage.open(i.file.name).read(), trained_version.image_size) for i in readable]
    )
    probabilities = np.asarray(model(pixels, training=False), dtype=np.float64)
    for image, p in zip(readable, probabilities, strict=True):
        row = rows[image.pk]
        ranked = np.sort(p)[::-1]
        assert (
            row.suggestion == trained_version.classes[int(p.argmax())] and row.suggestion_version == trained_version.pk
        )
        assert row.suggestion_confidence == pytest.approx(ranked[0], abs=1e-5)
        assert row.suggestion_margin == pytest.approx(ranked[0] - ranked[1], abs=1e-5)
        assert row.suggestion_entropy == pytest.approx(-(p * np.log(np.maximum(p, 1e-30))).sum(), abs=1e-4)
    # An easy dataset: the suggestions mostly agree with the given (imported) labels.
    agree = sum(rows[i.pk].suggestion == i.label.name for i in Image.objects.filter(pk__in=[r.pk for r in readable]))
    assert agree >= 0.8 * len(readable)
    for pk in (corrupt.pk, missing.pk):  # no suggestion rather than a stale one
        skipped = rows[pk]
        assert skipped.suggestion == "" and skipped.suggestion_confidence is None and skipped.suggestion_version is None


@pytest.mark.django_db
def test_the_command_scores_and_sums_up_in_one_line(trained_version, capsys):
    call_command("score_dataset", "colours", "--inline")
    run = ScoringRun.objects.get()
    assert capsys.readouterr().out.strip() == (
        f"Scoring run {run.pk} of colours with {trained_version.name}: succeeded, 120 images scored, 0 skipped"
    )
    assert not Image.objects.filter(dataset=trained_version.dataset, suggestion_version__isnull=True).exists()
    call_command("score_dataset", str(trained_version.dataset.pk), "--inline", "--json")
    assert '"status": "succeeded", "processed": 120, "total": 120, "skipped": 0' in capsys.readouterr().out


# --- refusals and failures --------------------------------------------------------------


@pytest.mark.django_db
def test_without_a_promoted_model_nothing_starts(colour_dataset, api, admin_user):
    model_version_row(colour_dataset)  # trained, but not promoted
    with pytest.raises(ValueError, match="colours has no live model"):
        scoring_start(dataset=colour_dataset)
    with pytest.raises(CommandError, match="colours has no live model"):
        call_command("score_dataset", str(colour_dataset.pk))
    with pytest.raises(CommandError, match="no model version 999"):
        call_command("score_dataset", str(colour_dataset.pk), "--model-version", "999")
    api.force_authenticate(admin_user)
    response = api.post("/api/v1/scoring-runs/", {"dataset": colour_dataset.pk}, format="json")
    assert response.status_code == 400 and "colours has no live model" in response.json()["detail"]
    assert not ScoringRun.objects.exists()


@pytest.mark.django_db
def test_the_command_names_an_unknown_dataset(promoted_row):
    with pytest.raises(CommandError, match="no dataset named or numbered 'nope'"):
        call_command("score_dataset", "nope")


@pytest.mark.django_db
def test_one_active_run_per_dataset(promoted_row, colour_dataset, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        first = scoring_start(dataset=colour_dataset)
    assert first.status == "queued" and first.model_version == promoted_row and len(queued) == 1
    with django_capture_on_commit_callbacks() as again, pytest.raises(ScoringRefused, match="already being scored"):
        scoring_start(dataset=colour_dataset)
    assert len(again) == 1  # the queued run's message is sent again: it may have been lost
    other = dataset_create(name="other")
    with pytest.raises(ScoringRefused, match="other has no live model"):  # not colours' model, unless told
        scoring_start(dataset=other, enqueue=False)
    told = scoring_start(dataset=other, version=promoted_row, enqueue=False)
    assert told.dataset == other and told.model_version == promoted_row  # other datasets are not held up

    ScoringRun.objects.filter(pk=first.pk).update(status="running", heartbeat_at=timezone.now())
    with pytest.raises(ScoringRefused, match="is running"):
        scoring_start(dataset=colour_dataset, enqueue=False)
    ScoringRun.objects.filter(pk=first.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    first.refresh_from_db()
    assert first.is_stale
    second = scoring_start(dataset=colour_dataset, enqueue=False)  # a dead worker's run no longer blocks
    first.refresh_from_db()
    assert first.status == "failed" and "worker stopped" in first.error and second.status == "queued"


@pytest.mark.django_db
def test_the_task_fails_a_run_whose_model_file_is_missing_and_ignores_duplicates(promoted_row, colour_dataset):
    from classification.tasks import score_dataset

    run = scoring_start(dataset=colour_dataset, enqueue=False)
    score_dataset.apply(args=[run.pk])  # in this process, as a worker would
    run.refresh_from_db()
    assert run.status == "failed" and run.error == f"Model file of version {promoted_row.pk} is missing."
    assert run.finished_at is not None and run.is_finished
    score_dataset.apply(args=[run.pk])  # delivered again: not queued, nothing happens
    run.refresh_from_db()
    assert run.status == "failed"


@pytest.mark.django_db
def test_a_broker_that_is_down_fails_the_run_saying_so(
    promoted_row, colour_dataset, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(
        "classifier_site.runs.publish", lambda task, *args: "Could not reach the task broker: is it running?"
    )
    with django_capture_on_commit_callbacks(execute=True):
        run = scoring_start(dataset=colour_dataset)
    run.refresh_from_db()
    assert run.status == "failed" and "task broker" in run.error


# --- API ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_starts_lists_and_shows_runs(api, admin_user, promoted_row, colour_dataset):
    api.force_authenticate(admin_user)
    made = api.post("/api/v1/scoring-runs/", {"dataset": colour_dataset.pk}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["status"] == "queued" and body["dataset"] == colour_dataset.pk
    assert body["model_version"] == promoted_row.pk and body["model_version_name"] == promoted_row.name
    assert body["progress"] is None and body["total"] is None
    run = ScoringRun.objects.get(pk=body["id"])
    assert run.created_by == admin_user

    again = api.post("/api/v1/scoring-runs/", {"dataset": colour_dataset.pk}, format="json")
    assert again.status_code == 400 and "already being scored" in again.json()["detail"]
    assert api.post("/api/v1/scoring-runs/", {"dataset": 9999}, format="json").status_code == 400

    ScoringRun.objects.filter(pk=run.pk).update(status="running", total=200, processed=50)
    listed = api.get(f"/api/v1/scoring-runs/?dataset={colour_dataset.pk}").json()
    assert listed["count"] == 1 and listed["results"][0]["progress"] == 0.25
    other = dataset_create(name="other")
    assert api.get(f"/api/v1/scoring-runs/?dataset={other.pk}").json()["count"] == 0
    told = api.post("/api/v1/scoring-runs/", {"dataset": other.pk, "model_version": promoted_row.pk}, format="json")
    assert told.status_code == 201 and told.json()["model_version"] == promoted_row.pk  # another dataset's model
    assert api.post("/api/v1/scoring-runs/", {"dataset": other.pk, "model_version": 9999}).status_code == 400
    one = api.get(f"/api/v1/scoring-runs/{run.pk}/")
    assert one.status_code == 200 and one.json()["processed"] == 50
    assert api.get("/api/v1/scoring-runs/9999/").status_code == 404


@pytest.mark.django_db
def test_api_is_for_admins_only(api, member, promoted_row, colour_dataset):
    run = scoring_start(dataset=colour_dataset, enqueue=False)
    for method, url in (("get", "/api/v1/scoring-runs/"), ("get", f"/api/v1/scoring-runs/{run.pk}/"),
                        ("post", "/api/v1/scoring-runs/")):  # fmt: skip
        assert getattr(api, method)(url, {"dataset": colour_dataset.pk}).status_code in (401, 403)
        api.force_authenticate(member)
        assert getattr(api, method)(url, {"dataset": colour_dataset.pk}).status_code == 403
        api.force_authenticate(None)
    assert ScoringRun.objects.count() == 1


# --- pages -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_endpoint_starts_a_run_and_goes_back(admin_client, member_client, promoted_row, colour_dataset):
    url = f"/models/score/{colour_dataset.pk}/"
    assert admin_client.get(url).status_code == 405
    assert member_client.post(url, {"next": "/datasets/"}).status_code == 302  # to the login page
    assert not ScoringRun.objects.exists()

    back = f"/datasets/{colour_dataset.pk}/?label=3"
    response = admin_client.post(url, {"next": back}, follow=True)
    assert response.redirect_chain[0] == (back, 302)
    assert ScoringRun.objects.filter(dataset=colour_dataset, status="queued").count() == 1
    assert f"Scoring colours with {promoted_row.name}" in response.content.decode()

    refused = admin_client.post(url, {"next": "https://elsewhere.example/"}, follow=True)
    assert refused.redirect_chain[0] == (f"/datasets/{colour_dataset.pk}/", 302)  # not off the site
    assert "already being scored" in refused.content.decode()
    assert admin_client.post("/models/score/9999/").status_code == 404


@pytest.mark.django_db
def test_the_page_endpoint_says_when_no_model_is_promoted(admin_client, colour_dataset):
    response = admin_client.post(f"/models/score/{colour_dataset.pk}/", follow=True)
    assert "colours has no live model" in response.content.decode() and not ScoringRun.objects.exists()


@pytest.mark.django_db
def test_the_status_partial_polls_while_running_and_names_the_model_when_done(
    admin_client, member_client, promoted_row, colour_dataset, admin_user
):
    request = RequestFactory().get(f"/datasets/{colour_dataset.pk}/label/")
    request.user = admin_user
    empty = render_to_string(
        "classification/_scoring_status.html", {"scoring": None, "dataset": colour_dataset}, request
    )
    assert "No model suggestions yet" in empty and "Score with its live model" in empty
    assert f'name="next" value="/datasets/{colour_dataset.pk}/label/"' in empty and "hx-trigger" not in empty

    run = scoring_start(dataset=colour_dataset, enqueue=False)
    url = f"/models/score/runs/{run.pk}/?next=/datasets/{colour_dataset.pk}/label/"
    queued = admin_client.get(url).content.decode()
    assert 'hx-trigger="every 2s"' in queued and "Waiting for a worker" in queued and "<form" not in queued
    ScoringRun.objects.filter(pk=run.pk).update(status="running", total=120, processed=40, heartbeat_at=timezone.now())
    running = admin_client.get(url).content.decode()
    assert '<progress max="120" value="40">' in running and "40 of 120 images scored" in running

    ScoringRun.objects.filter(pk=run.pk).update(status="succeeded", processed=120, finished_at=timezone.now())
    done = admin_client.get(url)
    page = done.content.decode()
    assert done["HX-Trigger"] == "scoring-finished" and "hx-trigger" not in page
    assert f'Suggestions from <a href="/models/{promoted_row.pk}/">{promoted_row.name}</a>, scored' in page
    assert f'name="next" value="/datasets/{colour_dataset.pk}/label/"' in page  # back to the page, not the partial
    outside = admin_client.get(f"/models/score/runs/{run.pk}/?next=https://elsewhere.example/").content.decode()
    assert f'value="/datasets/{colour_dataset.pk}/"' in outside
    assert member_client.get(url).status_code == 302


@pytest.mark.worker
def test_a_real_worker_scores_then_the_review_queue_finds_a_planted_label_error(celery_worker_process, trained_version):
    """End to end: `score_dataset --wait` queues a run, a real Celery worker process scores the dataset, and an
    image given a wrong label shows up in the workbench's review queue."""

    from datasets.selectors import workbench_images

    dataset = trained_version.dataset
    red = Image.objects.filter(dataset=dataset, label__name="red").first()
    Image.objects.filter(pk=red.pk).update(label=dataset.labels.get(name="blue"))  # a planted label error
    err = io.StringIO()
    call_command("score_dataset", dataset.name, "--wait", "--timeout", "120", stderr=err)  # follows the worker
    run = ScoringRun.objects.get(dataset=dataset)
    assert run.status == "succeeded", run.error or celery_worker_process.log_path.read_text()[-3000:]
    assert f"run {run.pk}: succeeded {run.total}/{run.total}" in err.getvalue()
    assert run.processed == run.total == dataset.images.count()
    red.refresh_from_db()
    assert red.suggestion == "red" and red.suggestion_confidence >= 0.9, red.suggestion_confidence
    assert red.pk in set(workbench_images(dataset=dataset, show="review").values_list("pk", flat=True))
