"""Migrations forwards from the previous release: the scoring table changes app
without losing a row, and the suggestion's foreign key becomes plain data that
keeps which version made each suggestion."""

from collections.abc import Iterator

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("datasets", "0006_label_change_undo_state"), ("trainer", "0006_transfer_recipe")]
AFTER = [
    ("datasets", "0007_run_status_and_plain_suggestion"),
    ("trainer", "0007_run_status_and_plain_suggestion"),
    ("classification", "0001_scoring_run"),
]


def _migrate(targets: list[tuple[str, str | None]]):  # -> the historical apps at `targets`
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state([t for t in targets if t[1]]).apps


@pytest.fixture
def latest_afterwards(transactional_db: None) -> Iterator[None]:
    """The tests after this one find the schema they expect."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_scoring_runs_and_suggestions_survive_the_move_to_serving(latest_afterwards: None) -> None:
    old = _migrate([*BEFORE, ("classification", None)])
    dataset = old.get_model("datasets", "Dataset").objects.create(name="d")
    job = old.get_model("trainer", "TrainingJob").objects.create(dataset=dataset, config={})
    version = old.get_model("trainer", "ModelVersion").objects.create(
        job=job, dataset=dataset, file="m.keras", sha256="0" * 64, arch="baseline", image_size=32, classes=["a"]
    )
    image = old.get_model("datasets", "Image").objects.create(
        dataset=dataset, file="i.png", width=1, height=1, sha256="1" * 64, suggestion="a", suggestion_model=version
    )
    unscored = old.get_model("datasets", "Image").objects.create(
        dataset=dataset, file="j.png", width=1, height=1, sha256="2" * 64
    )
    run = old.get_model("trainer", "ScoringRun").objects.create(dataset=dataset, model_version=version, status="failed")

    new = _migrate(AFTER)
    images = new.get_model("datasets", "Image").objects
    assert images.get(pk=image.pk).suggestion_version == version.pk
    assert images.get(pk=unscored.pk).suggestion_version is None
    moved = new.get_model("classification", "ScoringRun").objects.get(pk=run.pk)
    assert (moved.dataset_id, moved.model_version_id, moved.status) == (dataset.pk, version.pk, "failed")
    with connection.cursor() as cursor:  # the same table, not a copy
        cursor.execute("SELECT COUNT(*) FROM trainer_scoringrun")
        assert cursor.fetchone() == (1,)


def test_serving_per_dataset_keeps_each_live_version_and_stamps_queued_jobs(latest_afterwards: None) -> None:
    """From the release with one promoted version for the site: it stays live (now its
    dataset's), a second dataset may then have its own, and jobs already queued get
    the time their message went out."""
    old = _migrate([("trainer", "0007_run_status_and_plain_suggestion")])
    dataset = old.get_model("datasets", "Dataset").objects.create(name="d")
    other = old.get_model("datasets", "Dataset").objects.create(name="e")
    jobs = old.get_model("trainer", "TrainingJob").objects
    queued, done = jobs.create(dataset=dataset, config={}), jobs.create(dataset=dataset, config={}, status="succeeded")
    version = old.get_model("trainer", "ModelVersion").objects.create(
        job=done, dataset=dataset, file="m.keras", sha256="0" * 64, arch="baseline", image_size=32, classes=["a"],
        is_promoted=True,
    )  # fmt: skip

    new = _migrate([("trainer", "0010_job_published_at")])
    versions = new.get_model("trainer", "ModelVersion").objects
    assert list(versions.filter(is_promoted=True).values_list("pk", flat=True)) == [version.pk]
    second = new.get_model("trainer", "TrainingJob").objects.create(dataset_id=other.pk, config={}, status="succeeded")
    versions.create(job=second, dataset_id=other.pk, file="n.keras", sha256="1" * 64, arch="baseline", image_size=32,
                    classes=["a"], is_promoted=True)  # fmt: skip  # another dataset: allowed now
    assert versions.filter(is_promoted=True).count() == 2
    stamped = new.get_model("trainer", "TrainingJob").objects
    assert stamped.get(pk=queued.pk).published_at == stamped.get(pk=queued.pk).created_at
    assert stamped.get(pk=done.pk).published_at is None
