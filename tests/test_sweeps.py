"""Sweeps: the trials they make, successive halving stopping the trials behind, the best
picked and promoted, the page, the API and the `sweep` command."""

import json

import pytest
from django.core.management import CommandError, call_command

from classifier_site.runs import RunStatus
from trainer.jobs.reaper import reaper_pass
from trainer.jobs.services import training_job_run
from trainer.ml.config import ConfigError
from trainer.ml.sweep import goes_on, parse_space, rungs, trial_params
from trainer.models import Sweep, TrainingJob
from trainer.sweeps.services import SweepRefused, sweep_cancel, sweep_start

# --- which trials (no database) ------------------------------------------------------


def test_a_grid_is_every_combination_and_a_budget_below_it_draws_some_of_them():
    space = {"learning_rate": [0.1, 0.4], "arch": ["resnet", "baseline"]}
    every = trial_params(space, method="grid", budget=10)
    assert len(every) == 4 and {(t["arch"], t["learning_rate"]) for t in every} == {
        ("resnet", 0.1), ("resnet", 0.4), ("baseline", 0.1), ("baseline", 0.4),
    }  # fmt: skip
    three = trial_params(space, method="grid", budget=3, seed=7)
    assert len(three) == 3 and all(t in every for t in three)
    assert trial_params(space, method="grid", budget=3, seed=7) == three  # the seed decides, not chance


def test_random_samples_ranges_within_bounds_and_typed_by_the_config_field():
    space = parse_space(["learning_rate = 1e-4..1e-1 log", "epochs = 2..5", "flip = on, off"])
    trials = trial_params(space, method="random", budget=20, seed=1)
    assert len(trials) == 20
    assert all(1e-4 <= t["learning_rate"] <= 1e-1 for t in trials)
    assert {t["epochs"] for t in trials} <= {2, 3, 4, 5} and all(isinstance(t["epochs"], int) for t in trials)
    assert {t["flip"] for t in trials} == {True, False}
    rates = sorted(t["learning_rate"] for t in trials)
    assert rates[0] < 1e-3 and rates[-1] > 1e-2  # log-uniform spreads over the decades


@pytest.mark.parametrize(
    ("lines", "method", "says"),
    [
        (["colour = red, blue"], "grid", "colour: not a config field"),
        (["epochs = two"], "grid", "epochs:"),
        (["learning_rate 0.1"], "grid", "line 1: expected"),
        (["learning_rate = 0.001..0.1"], "grid", "ranges need method random"),
        (["learning_rate = 0.1..0.01"], "random", "low < high"),
    ],
)
def test_a_space_that_makes_no_sense_is_refused_naming_what(lines, method, says):
    with pytest.raises(ConfigError, match=says):
        trial_params(parse_space(lines), method=method, budget=4)


def test_rungs_and_the_top_share_that_goes_on():
    assert rungs(first=1, eta=3, epochs=12) == [1, 3, 9]
    assert rungs(first=2, eta=2, epochs=8) == [2, 4]
    assert rungs(first=5, eta=3, epochs=5) == []  # a rung at the last epoch would judge nothing
    assert goes_on(0.2, [0.2, 0.9], eta=3)  # too few to judge
    assert not goes_on(0.2, [0.2, 0.5, 0.9], eta=3) and goes_on(0.9, [0.2, 0.5, 0.9], eta=3)
    assert goes_on(0.6, [0.2, 0.5, 0.6, 0.9], eta=2) and not goes_on(0.5, [0.2, 0.5, 0.6, 0.9], eta=2)


# --- sweeps on the site --------------------------------------------------------------

FAST = {"arch": "baseline", "epochs": 4, "batch_size": 16}


@pytest.mark.django_db
def test_a_sweep_queues_one_job_per_trial_on_one_snapshot(colour_dataset):
    sweep = sweep_start(dataset=colour_dataset, space={"learning_rate": [1e-3, 3e-3, 1e-2]}, base=FAST, budget=8)
    trials = list(sweep.trials.order_by("pk"))
    assert [t.config["learning_rate"] for t in trials] == [1e-3, 3e-3, 1e-2]
    assert all(t.config["arch"] == "baseline" and t.config["epochs"] == 4 for t in trials)
    assert len({t.snapshot_hash for t in trials}) == 1 and all(t.status == RunStatus.QUEUED for t in trials)
    assert sweep.status == RunStatus.RUNNING and sweep.space == {"learning_rate": [1e-3, 3e-3, 1e-2]}


@pytest.mark.django_db
def test_a_sweep_with_a_bad_field_starts_no_job(colour_dataset):
    with pytest.raises(SweepRefused, match="learning_rate: must be in"):
        sweep_start(dataset=colour_dataset, space={"learning_rate": [0.1, 50.0]}, base=FAST)
    with pytest.raises(SweepRefused, match="eta"):
        sweep_start(dataset=colour_dataset, space={"learning_rate": [0.1]}, base=FAST, eta=1)
    assert not TrainingJob.objects.exists() and not Sweep.objects.exists()


@pytest.mark.django_db
def test_successive_halving_stops_the_trial_behind_and_the_best_is_promoted(
    colour_dataset, django_capture_on_commit_callbacks
):
    """Trial 1 learns (Adam 1e-2); trial 2 (1e-7) cannot. At the rung (epoch 3, eta 2) the
    second has a peer to be judged against and is behind: it stops there, saying why."""
    sweep = sweep_start(
        dataset=colour_dataset, space={"learning_rate": [1e-2, 1e-7]}, base=FAST, eta=2, first_rung=3,
        promote_best=True,
    )  # fmt: skip
    good, bad = sweep.trials.order_by("pk")
    for trial in (good, bad):
        with django_capture_on_commit_callbacks(execute=True):
            training_job_run(job_id=trial.pk)
    good.refresh_from_db(), bad.refresh_from_db(), sweep.refresh_from_db()
    assert good.status == RunStatus.SUCCEEDED and good.epoch == 4 and good.stopped_at_rung is None
    assert bad.status == RunStatus.CANCELLED and bad.stopped_at_rung == 3 and bad.epoch == 3
    assert "Stopped early by its sweep at epoch 3" in bad.error and not hasattr(bad, "model_version")
    assert sweep.status == RunStatus.SUCCEEDED and sweep.best_job_id == good.pk
    assert sweep.best_score == max(e["val_accuracy"] for e in good.history)
    assert good.model_version.is_promoted and f"Promoted as v{good.model_version.pk}" in sweep.outcome


@pytest.mark.django_db
def test_without_early_stopping_every_trial_runs_to_its_end(colour_dataset, django_capture_on_commit_callbacks):
    sweep = sweep_start(dataset=colour_dataset, space={"learning_rate": [1e-2, 1e-7]}, base={**FAST, "epochs": 2},
                        eta=2, first_rung=1, early_stopping=False)  # fmt: skip
    for trial in sweep.trials.order_by("pk"):
        with django_capture_on_commit_callbacks(execute=True):
            training_job_run(job_id=trial.pk)
    assert set(sweep.trials.values_list("status", flat=True)) == {RunStatus.SUCCEEDED}
    sweep.refresh_from_db()
    # Not asked to promote (a dataset's first model serves by itself, as any first model does).
    assert sweep.status == RunStatus.SUCCEEDED and "Promoted" not in sweep.outcome


@pytest.mark.django_db
def test_the_reaper_ends_a_sweep_whose_last_trial_ended_without_it(colour_dataset):
    """The trial's own settle runs after its commit; a worker killed in between leaves the
    sweep running with nothing left to run, until the reaper's pass."""
    sweep = sweep_start(dataset=colour_dataset, space={"learning_rate": [1e-2, 1e-3]}, base=FAST)
    sweep.trials.update(status=RunStatus.FAILED, error="RuntimeError: boom")
    assert reaper_pass() and Sweep.objects.get(pk=sweep.pk).status == RunStatus.FAILED
    assert "No trial succeeded" in Sweep.objects.get(pk=sweep.pk).outcome


@pytest.mark.django_db
def test_cancelling_a_sweep_cancels_its_queued_trials(colour_dataset):
    sweep = sweep_start(dataset=colour_dataset, space={"learning_rate": [1e-2, 1e-3]}, base=FAST)
    sweep = sweep_cancel(sweep=sweep)
    assert sweep.status == RunStatus.CANCELLED and sweep.finished_at
    assert set(sweep.trials.values_list("status", flat=True)) == {RunStatus.CANCELLED}


@pytest.mark.django_db
def test_the_sweep_pages(roles, colour_dataset):
    owner = roles["admin"]
    page = owner.get("/sweeps/new/")
    assert page.status_code == 200 and "learning_rate = 0.1, 0.4" in page.content.decode()
    bad = owner.post("/sweeps/new/", {"dataset": colour_dataset.pk, "space": "colour = red", "method": "grid",
                                      "budget": 4, "base": ""})  # fmt: skip
    assert bad.status_code == 200 and "colour: not a config field" in bad.content.decode()
    made = owner.post("/sweeps/new/", {"dataset": colour_dataset.pk, "space": "learning_rate = 0.01, 0.001",
                                       "method": "grid", "budget": 4, "base": "arch=baseline, epochs=3",
                                       "early_stopping": "on"})  # fmt: skip
    sweep = Sweep.objects.get()
    assert made.status_code == 302 and made["Location"] == f"/sweeps/{sweep.pk}/"
    assert sweep.base_config == {"arch": "baseline", "epochs": 3} and sweep.trials.count() == 2
    TrainingJob.objects.filter(sweep=sweep).update(history=[{"epoch": 1, "val_accuracy": 0.5}])
    detail = owner.get(f"/sweeps/{sweep.pk}/").content.decode()
    assert "learning_rate" in detail and 'id="sweep-curves"' in detail and "sweep-curves.js" in detail
    curves = json.loads(detail.split('id="sweep-curves" type="application/json">')[1].split("</script>")[0])
    assert [c["points"] for c in curves] == [[[1, 0.5]], [[1, 0.5]]]
    assert f"/sweeps/{sweep.pk}/" in owner.get("/sweeps/").content.decode()
    assert roles["user"].get(f"/sweeps/{sweep.pk}/").status_code == 302  # admins only: to the login page
    assert owner.post(f"/sweeps/{sweep.pk}/cancel/").status_code == 302
    assert Sweep.objects.get().status == RunStatus.CANCELLED


@pytest.mark.django_db
def test_the_sweep_api(roles, colour_dataset, django_user_model):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(django_user_model.objects.get(username="admin"))
    body = {"dataset": colour_dataset.pk, "space": {"learning_rate": [0.01, 0.001]}, "base_config": FAST,
            "budget": 4, "eta": 2}  # fmt: skip
    made = api.post("/api/v1/sweeps/", body, format="json")
    assert made.status_code == 201, made.content
    assert [t["params"] for t in made.json()["trials"]] == [{"learning_rate": 0.01}, {"learning_rate": 0.001}]
    assert api.get(f"/api/v1/sweeps/{made.json()['id']}/").json()["status"] == "running"
    refused = api.post("/api/v1/sweeps/", {**body, "space": {"colour": ["red"]}}, format="json")
    assert refused.status_code == 400 and "colour: not a config field" in refused.content.decode()
    assert api.post(f"/api/v1/sweeps/{made.json()['id']}/cancel/").json()["status"] == "cancelled"
    member = APIClient()
    member.force_authenticate(django_user_model.objects.get(username="user"))
    assert member.get("/api/v1/sweeps/").status_code == 403


@pytest.mark.django_db
def test_the_sweep_command(colour_dataset, capsys):
    call_command("sweep", "colours", "--param", "learning_rate=0.01,0.001", "--set", "arch=baseline",
                 "--set", "epochs=3", "--json")  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "running" and [t["learning_rate"] for t in printed["trials"]] == [0.01, 0.001]
    assert Sweep.objects.get(pk=printed["sweep"]).base_config == {"arch": "baseline", "epochs": 3}  # typed, not "3"
    call_command("sweep", "--show", str(printed["sweep"]))
    assert f"Sweep {printed['sweep']}: running" in capsys.readouterr().out
    with pytest.raises(CommandError, match="colour: not a config field"):
        call_command("sweep", "colours", "--param", "colour=red")
    with pytest.raises(CommandError, match="at least one --param"):
        call_command("sweep", "colours")
