"""Who may call what: every page and API route, for each role, against the README.

The README's "Who may call what" table is the source of truth: one row per route
and method with the status each role gets. This test requests every row as an
admin (superuser), a second staff user, an ordinary user and an anonymous client,
on a fresh set of records made by the factories, and compares. A route the URL
configuration has and the table lacks fails too, so a new route needs its row.
Writes are sent with an empty body: the point is who gets past the door (an admin's
400 is a refused body, a user's 403 or a redirect to the login page is the door).
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.conftest import ROLES
from tests.factories import (
    DatasetExportFactory,
    DatasetImportFactory,
    EvaluationFactory,
    ImageFactory,
    ModelExportFactory,
    PredictionFactory,
    ScoringRunFactory,
)
from trainer.models import QualityRun, Sweep

README = Path(__file__).resolve().parent.parent / "README.md"
CELL = r"(\d{3}|login)"
ROW = re.compile(rf"^\| `(GET|POST|PATCH|DELETE) (/[^`]*)` \| {CELL} \| {CELL} \| {CELL} \| {CELL} \|")
# Not the site's own routes, or not one status per role (readyz answers for the broker).
UNLISTED = ("admin/", "accounts/", "readyz")


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    expected: dict[str, str]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def readme_rows() -> list[Row]:
    section = README.read_text().split("## Who may call what", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if match := ROW.match(line):
            method, path, *codes = match.groups()
            rows.append(Row(method, path, dict(zip(ROLES, codes, strict=True))))
    return rows


ROWS = readme_rows()


@pytest.fixture
def world(roles: dict[str, Client]) -> dict[str, object]:
    """One of each record, all in one dataset, and the clients of every role."""
    prediction = PredictionFactory()
    evaluation = prediction.evaluation
    version = evaluation.model_version
    dataset = version.dataset
    image = ImageFactory(dataset=dataset)
    DatasetExportFactory(dataset=dataset)  # its download is a route of the dataset: no id of its own
    return {
        "clients": roles,
        "dataset": dataset.pk,
        "image": image.pk,
        "label": image.label_id,
        "import": DatasetImportFactory(dataset=dataset).pk,
        "job": version.job_id,
        "sweep": Sweep.objects.create(dataset=dataset, space={"learning_rate": [0.1]}, budget=1).pk,
        "model": version.pk,
        "export": ModelExportFactory(model_version=version).pk,
        "evaluation": evaluation.pk,
        "prediction": prediction.pk,
        "run": ScoringRunFactory(dataset=dataset, model_version=version).pk,
        "quality": QualityRun.objects.create(
            dataset=dataset,
            backbone="tiny",
            image_size=32,
            status="succeeded",
            report={"groups": [[image.pk, ImageFactory(dataset=dataset).pk]]},
        ).pk,
        "group": 0,
        "other_evaluation": EvaluationFactory().pk,
    }


def _url(path: str, world: dict[str, object]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(world[m.group(1)]), path)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_each_role_gets_what_the_readme_says(world: dict[str, object], row: Row) -> None:
    url = _url(row.path, world)
    clients: dict[str, Client] = world["clients"]  # type: ignore[assignment]
    observed = {role: _status(clients[role], row.method, url) for role in ROLES}
    as_row = f"| `{row}` | " + " | ".join(str(observed[r]) for r in ROLES) + " |"
    assert observed == row.expected, f"observed, as a README row:\n{as_row}"


def _status(client: Client, method: str, url: str) -> str:
    """The status one caller gets, on the world as the fixture made it (each call is rolled back)."""
    with transaction.atomic():
        call = getattr(client, method.lower())
        response = call(url, content_type="application/json") if method in ("PATCH", "DELETE") else call(url)
        transaction.set_rollback(True)
    if response.status_code == 302 and "/login/" in response["Location"]:
        return "login"
    return str(response.status_code)


def _routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> list[str]:
    found = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif r"\.(?P<format>" not in str(pattern.pattern) and "drf_format_suffix" not in str(pattern.pattern):
            found.append(prefix + str(pattern.pattern))
    return found


def _shape(route: str) -> str:
    """A route with every parameter as `*`, from a URL pattern or a README path alike."""
    route = route.replace("^", "").replace("$", "").replace("\\", "")
    route = re.sub(r"\(\?P<\w+>(?:[^()]|\([^()]*\))*\)", "*", route)
    route = re.sub(r"<[^>]+>|\{\w+\}", "*", route)
    return "/" + route.lstrip("/")


def _readme_shape(path: str) -> str:
    """README paths name real values where the route takes any (a chart, a cell, a format)."""
    shaped = _shape(path)
    shaped = re.sub(r"/cells/\d+/\d+/", "/cells/*/*/", shaped)
    shaped = re.sub(
        r"/charts/[\w-]+(\.png)?/?$", lambda m: "/charts/*" + (m.group(1) or "") + "/" * (path.endswith("/")), shaped
    )
    shaped = re.sub(r"/exports/(keras|onnx|tflite|savedmodel)/", "/exports/*/", shaped)
    return re.sub(r"/images/\*/(original|thumbnail)/", "/images/*/*/", shaped)


def test_every_route_has_a_row_in_the_readme() -> None:
    listed = {_readme_shape(row.path) for row in ROWS}
    routes = [_shape(r) for r in _routes(get_resolver().url_patterns) if not r.startswith(UNLISTED)]
    missing = sorted({r for r in routes if r not in listed})
    assert ROWS and not missing, "routes without a row in the README's table:\n" + "\n".join(missing)


def test_the_table_has_a_row_per_route_and_method_once() -> None:
    keys = [str(row) for row in ROWS]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
