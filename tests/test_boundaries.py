"""The shape of the code, held by tests: DESIGN.md's dependency direction
(classification -> trainer -> datasets, with trainer/ml importing no Django and
nothing of the apps), API modules that import no views, views and API modules that
write nothing to the database themselves, templates that include only what their
app may know, and model relations along the same direction.

Imports are read from each module's syntax tree (every import, also those inside
functions), never by searching text."""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.apps import apps

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("classifier_site", "datasets", "trainer", "classification")
# classifier_site's modules that wire the apps together; the others are infrastructure below every app.
WIRING = {"classifier_site.urls", "classifier_site.api_urls", "classifier_site.views", "classifier_site.celery",
          "classifier_site.wsgi", "classifier_site.settings", "classifier_site.health"}  # fmt: skip
LAYERS = {"datasets": 1, "trainer": 2, "classification": 3}
WEB = ("django", "rest_framework", "celery", "drf_spectacular", "django_filters")


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.imported}: {self.rule}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Every module an import statement names, with its line; `from a import b` names
    both `a` and `a.b` (b may be a module), relative imports are not used here."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _infrastructure(name: str) -> bool:
    """classifier_site's lower modules (and the package itself, as in `from classifier_site import errors`)."""
    return name == "classifier_site" or (name.startswith("classifier_site.") and name not in WIRING)


def rule_broken(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when it may."""
    top = imported.split(".")[0]
    if importer.startswith("trainer.ml"):
        if top in WEB:
            return "trainer/ml imports no Django, DRF or Celery"
        if top in PACKAGES and not imported.startswith("trainer.ml"):
            return "trainer/ml imports nothing of the apps"
        return None
    if top not in PACKAGES:
        return None
    if importer.startswith("classifier_site."):
        if importer in WIRING or _infrastructure(imported):
            return None
        return "classifier_site's infrastructure imports no app (only its wiring: urls, api_urls, views...)"
    if top == "classifier_site":
        return None if _infrastructure(imported) else "apps import classifier_site's infrastructure, not its wiring"
    mine, theirs = LAYERS[importer.split(".")[0]], LAYERS[top]
    if theirs > mine:
        return "against the direction classification -> trainer -> datasets"
    return None


def violations_in(path: Path, source: str | None = None) -> list[Violation]:
    importer = module_name(path)
    text = path.read_text() if source is None else source
    found = []
    for line, imported in imported_modules(text):
        if (rule := rule_broken(importer, imported)) is not None:
            found.append(Violation(str(path.relative_to(ROOT)), line, imported, rule))
    return found


def app_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def test_every_import_follows_the_dependency_direction() -> None:
    violations = [v for path in app_modules() for v in violations_in(path)]
    assert not violations, "\n".join(map(str, violations))


@pytest.mark.parametrize(
    ("file", "source"),
    [
        # The names that moved to the registry, imported from where they used to live:
        ("trainer/registry/exports.py", "from classification.predictor import local_model_file"),
        ("trainer/reports/services.py", "def f():\n    from classification.predictor import NoModelAvailable\n"),
        ("datasets/workbench_views.py", "from classification.scoring.selectors import scoring_latest"),
        ("datasets/models.py", "import trainer.models"),
        ("trainer/ml/train.py", "from django.conf import settings"),
        ("trainer/ml/features.py", "from trainer.jobs.snapshots import snapshot_arrays"),
        ("classifier_site/storage.py", "from trainer.ml.files import fsync_path"),
        ("trainer/jobs/views.py", "from classifier_site.urls import urlpatterns"),
    ],
)
def test_an_import_against_the_direction_is_named_with_its_file_and_line(file: str, source: str) -> None:
    violations = violations_in(ROOT / file, source)
    assert violations, f"{source!r} in {file} passed"
    first = violations[0]
    assert first.file == file and first.line == source.count("\n", 0, source.index("import")) + 1
    assert str(first).startswith(f"{file}:{first.line} imports {first.imported}: ")


def test_allowed_imports_are_not_flagged() -> None:
    allowed = "from datasets.models import Dataset\nfrom classifier_site.runs import RunStatus\nimport numpy\n"
    assert violations_in(ROOT / "trainer/registry/exports.py", allowed) == []
    assert violations_in(ROOT / "classification/scoring/services.py", "from trainer.registry.files import x") == []
    assert violations_in(ROOT / "trainer/ml/train.py", "from trainer.ml.files import sha256_file") == []


def _views_and_apis() -> list[Path]:
    return [p for p in app_modules() if re.search(r"(^|_)(views|api)\.py$", p.name)]


def test_api_modules_import_no_view_modules() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in app_modules()
        if re.search(r"(^|_)api\.py$", p.name)
        for line, name in imported_modules(p.read_text())
        if name.split(".")[0] in PACKAGES and re.search(r"(^|\.|_)views$", name)
    ]
    assert not bad, "\n".join(bad)


ORM_WRITES = {"save", "delete", "create", "update", "bulk_create", "bulk_update", "get_or_create", "update_or_create"}
NOT_ORM = {"session", "messages", "response", "cache"}  # objects with methods of those names that are not the ORM


def _orm_writes(path: Path, source: str | None = None) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if (
            not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute))
            or node.func.attr not in ORM_WRITES
        ):
            continue
        owner = ast.unparse(node.func.value)
        if owner.split(".")[-1] in NOT_ORM or owner.startswith(("request.session", "default_storage")):
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner}.{node.func.attr}(...)")
    return found


def test_views_and_apis_write_through_services_only() -> None:
    writes = [w for p in _views_and_apis() for w in _orm_writes(p)]
    assert not writes, "write through a service instead:\n" + "\n".join(writes)


def test_the_write_check_sees_a_write_in_a_view() -> None:
    view = ROOT / "datasets" / "views.py"
    source = view.read_text() + "\n\ndef sneaky(form):\n    dataset = form.save(commit=False)\n    dataset.save()\n"
    found = _orm_writes(view, source)
    assert any("form.save(...)" in w for w in found) and any("dataset.save(...)" in w for w in found)


TEMPLATE_REF = re.compile(r"""\{%\s*(?:include|extends)\s+["']([\w/.-]+)["']""")


def test_templates_include_only_what_their_app_may_know() -> None:
    bad = []
    for template in sorted((ROOT / "templates").rglob("*.html")):
        folder = template.relative_to(ROOT / "templates").parts[0]
        if folder not in LAYERS:
            continue
        for name in TEMPLATE_REF.findall(template.read_text()):
            other = name.split("/")[0]
            if other in LAYERS and LAYERS[other] > LAYERS[folder]:
                bad.append(f"{template.relative_to(ROOT)} includes {name}")
    assert not bad, "\n".join(bad)


def test_model_relations_follow_the_direction() -> None:
    bad = []
    for model in apps.get_models():
        mine = LAYERS.get(model._meta.app_label)
        for field in model._meta.get_fields():
            related = getattr(field, "related_model", None)
            if mine is None or related is None or not field.concrete:
                continue
            theirs = LAYERS.get(related._meta.app_label)
            if theirs is not None and theirs > mine:
                bad.append(f"{model._meta.label}.{field.name} -> {related._meta.label}")
    assert not bad, "\n".join(bad)
