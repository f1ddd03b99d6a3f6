"""Evaluation reports: what a finished job stores, the report pages and downloads,
relabelling from a report, comparing jobs, the API and `evaluate`."""

import csv
import io
import json
import re

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image as PILImage
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from datasets.models import Image, Split
from datasets.services import dataset_create, images_add
from tests.conftest import CLASSES, model_version_row, synthetic_report
from tests.images import colour_items
from trainer.models import Evaluation


def test_a_finished_job_stores_a_full_report_with_every_prediction(trained_version):
    evaluation = trained_version.evaluations.get()
    metrics = evaluation.metrics
    tests = Image.objects.filter(dataset=trained_version.dataset, split=Split.TEST)
    assert metrics["count"] == tests.count() == evaluation.predictions.count() > 0
    assert {p.image_id for p in evaluation.predictions.all()} == set(tests.values_list("id", flat=True))
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["count"]
    for key in ("accuracy", "top_k_accuracy", "log_loss", "expected_calibration_error", "per_class", "macro_avg"):
        assert key in metrics
    # Stored rows agree with the stored matrix.
    matrix = np.zeros((3, 3), dtype=int)
    for p in evaluation.predictions.all():
        matrix[p.true_index, p.predicted_index] += 1
        assert p.confidence == pytest.approx(max(p.probabilities), abs=1e-4)
    assert matrix.tolist() == metrics["confusion_matrix"]
    for field in ("confusion_png", "confusion_normalized_png", "reliability_png"):
        with getattr(evaluation, field).open("rb") as fh:
            assert PILImage.open(fh).format == "PNG"


def test_report_page_shows_metrics_classes_and_a_clickable_matrix(admin_client, synthetic_evaluation):
    evaluation, _ = synthetic_evaluation
    page = admin_client.get(f"/evaluations/{evaluation.pk}/").content.decode()
    assert "Confusion matrix" in page and "Most confident mistakes" in page and "Reliability diagram" in page
    for name in CLASSES:
        assert f"<td>{name}</td>" in page
    # red (row 2) predicted as blue (column 0): 2 images, a link to that cell.
    assert re.search(rf'href="/evaluations/{evaluation.pk}/cells/2/0/"[^>]*>2</a>', page.replace("\n", " "))
    assert f"/evaluations/{evaluation.pk}/cells/2/1/" not in page  # empty cells are not links


def test_a_cell_lists_exactly_its_images(admin_client, synthetic_evaluation):
    evaluation, mistakes = synthetic_evaluation
    red_as_blue = {pk for pk, guess in mistakes.items() if guess == 0}
    page = admin_client.get(f"/evaluations/{evaluation.pk}/cells/2/0/", HTTP_HX_REQUEST="true").content.decode()
    shown = {int(pk) for pk in re.findall(r'data-image="(\d+)"', page)}
    assert shown == red_as_blue
    assert "True <strong>red</strong>, predicted <strong>blue</strong>: 2 images" in page
    assert page.count("predicted <strong>blue</strong> 0.90") == 2 and page.count("(0.05)") == 2  # p(true class)
    assert "<html" not in page  # a fragment for htmx
    assert admin_client.get(f"/evaluations/{evaluation.pk}/cells/2/0/").content.decode().count("<html") == 1
    assert admin_client.get(f"/evaluations/{evaluation.pk}/cells/7/0/").status_code == 404


def test_relabel_from_the_report_changes_the_image_label(admin_client, synthetic_evaluation):
    evaluation, mistakes = synthetic_evaluation
    image_pk = next(pk for pk, guess in mistakes.items() if guess == 1)  # the blue taken for green
    prediction = evaluation.predictions.get(image_id=image_pk)
    url = f"/evaluations/{evaluation.pk}/predictions/{prediction.pk}/relabel/"
    response = admin_client.post(url, {"label": "green"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "is now labelled green" in response.content.decode()
    assert Image.objects.get(pk=image_pk).label.name == "green"
    assert admin_client.post(url, {"label": "purple"}).status_code == 302  # refused with a message
    assert Image.objects.get(pk=image_pk).label.name == "green"
    # An outside `next` is not followed.
    assert admin_client.post(url, {"label": "blue", "next": "https://evil.example/"})["Location"] == (
        f"/evaluations/{evaluation.pk}/"
    )


def test_send_to_the_labelling_queue_and_relabelling_takes_it_out(admin_client, admin_user, synthetic_evaluation):
    evaluation, mistakes = synthetic_evaluation
    image_pk = next(iter(mistakes))
    prediction = evaluation.predictions.get(image_id=image_pk)
    base = f"/evaluations/{evaluation.pk}/predictions/{prediction.pk}"
    response = admin_client.post(f"{base}/queue/", HTTP_HX_REQUEST="true")
    assert "is in the labelling queue of colours" in response.content.decode()
    assert Image.objects.get(pk=image_pk).needs_review
    # The dataset page's "needs review" filter is the queue.
    page = admin_client.get(f"/datasets/{evaluation.dataset_id}/?review=1").content.decode()
    assert page.count('<label class="tile"') == 1 and f"/images/{image_pk}/thumbnail/" in page
    assert "in the labelling queue" in admin_client.get(f"/evaluations/{evaluation.pk}/").content.decode()
    api = APIClient()
    api.force_authenticate(admin_user)
    queued = api.get(f"/api/v1/images/?dataset={evaluation.dataset_id}&needs_review=true").json()["results"]
    assert [row["id"] for row in queued] == [image_pk]
    admin_client.post(f"{base}/relabel/", {"label": "green"})
    assert not Image.objects.get(pk=image_pk).needs_review  # a decided label leaves the queue


def test_report_pages_are_for_admins_only(client, member_client, synthetic_evaluation):
    evaluation, _ = synthetic_evaluation
    for path in (f"/evaluations/{evaluation.pk}/", f"/evaluations/{evaluation.pk}/predictions.csv"):
        assert client.get(path).status_code == 302
        assert member_client.get(path).status_code == 302  # to the admin login


def test_downloads_csv_of_every_prediction_and_json_report(admin_client, synthetic_evaluation):
    evaluation, mistakes = synthetic_evaluation
    response = admin_client.get(f"/evaluations/{evaluation.pk}/predictions.csv")
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == evaluation.predictions.count()
    wrong = {int(r["image_id"]) for r in rows if r["correct"] == "0"}
    assert wrong == set(mistakes)
    assert {"p_blue", "p_green", "p_red"} <= set(rows[0])
    document = json.loads(admin_client.get(f"/evaluations/{evaluation.pk}/report.json").content)
    assert document["metrics"]["accuracy"] == pytest.approx(1 - len(mistakes) / len(rows))
    assert document["classes"] == CLASSES


def test_charts_are_served_as_png(admin_client, synthetic_evaluation):
    evaluation, _ = synthetic_evaluation
    for name in ("confusion", "confusion-normalized", "reliability"):
        response = admin_client.get(f"/evaluations/{evaluation.pk}/charts/{name}.png")
        assert response["Content-Type"] == "image/png"
        assert PILImage.open(io.BytesIO(b"".join(response.streaming_content))).format == "PNG"
    assert admin_client.get(f"/evaluations/{evaluation.pk}/charts/other.png").status_code == 404


def test_compare_shows_metrics_per_class_deltas_and_config_differences(
    admin_client, colour_dataset, synthetic_evaluation
):
    first, _ = synthetic_evaluation
    second_version = model_version_row(colour_dataset, epochs=3)
    synthetic_report(colour_dataset, second_version, {})  # a perfect second model
    jobs = [first.model_version.job_id, second_version.job_id]
    page = admin_client.get(f"/evaluations/compare/?jobs={jobs[0]}&jobs={jobs[1]}").content.decode()
    assert "Configuration differences" in page and "<th>epochs</th><td>10</td><td>3</td>" in page
    # blue: F1 rises to 1 for the second (perfect) job; shown as a positive delta.
    assert re.search(
        r"<th>blue</th><td class=\"num\">[0-9.]+</td><td class=\"num\">1\.000 <span class=\"better\">\(\+", page
    )
    assert "Pick two or more" in admin_client.get("/evaluations/compare/").content.decode()


def test_api_lists_reports_with_artifact_links(admin_user, synthetic_evaluation):
    evaluation, _ = synthetic_evaluation
    api = APIClient()
    api.force_authenticate(admin_user)
    body = api.get(f"/api/v1/evaluations/?model_version={evaluation.model_version_id}").json()
    (item,) = body["results"]
    assert item["metrics"]["confusion_matrix"] == evaluation.metrics["confusion_matrix"]
    links = item["links"]
    assert links["report_page"] == f"http://testserver/evaluations/{evaluation.pk}/"
    # Downloads and charts are API URLs, so a token client can fetch them.
    token = APIClient(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin_user).key}")
    png = token.get(links["reliability_png"])
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    assert PILImage.open(io.BytesIO(b"".join(png.streaming_content))).format == "PNG"
    rows = b"".join(token.get(links["predictions_csv"]).streaming_content).decode().splitlines()
    assert len(rows) == 1 + evaluation.predictions.count()
    assert token.get(links["reliability_png"].replace("reliability", "nothing")).status_code == 404


def test_evaluate_command_reports_on_another_datasets_test_split(trained_version, capsys):
    # A new test set: the model's classes plus one it has never seen.
    fresh = dataset_create(name="fresh")
    items = colour_items(12, ("red", "blue", "green"))
    images_add(dataset=fresh, items=[(n, data, "gold" if label == "green" else label) for n, data, label in items])
    Image.objects.filter(dataset=fresh).update(split=Split.TEST)
    call_command("evaluate", str(trained_version.job_id), "--dataset", "fresh", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 24 and summary["other_classes_left_out"] == 12
    evaluation = Evaluation.objects.get(pk=summary["evaluation"])
    assert evaluation.dataset == fresh and evaluation.predictions.count() == 24
    assert summary["accuracy"] >= 0.8  # red and blue are easy


def test_evaluate_command_errors_are_clear(trained_version):
    with pytest.raises(CommandError, match="job 9999 has no model"):
        call_command("evaluate", "9999")
    with pytest.raises(CommandError, match="no dataset named or numbered 'nope'"):
        call_command("evaluate", str(trained_version.job_id), "--dataset", "nope")
    empty = dataset_create(name="empty")
    with pytest.raises(CommandError, match="empty has no labelled test images of the model's classes"):
        call_command("evaluate", str(trained_version.job_id), "--dataset", str(empty.pk))
