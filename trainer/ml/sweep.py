"""Sweeps: which configs a sweep's trials run, and when a trial stops early.

The trials come from scikit-learn's `ParameterGrid` (every combination) or
`ParameterSampler` (random samples; lists are drawn from, ranges sampled uniformly
or log-uniformly with scipy). Early stopping is asynchronous successive halving
(ASHA, Li et al. 2018): a trial reaching a rung (epochs first_rung, first_rung*eta,
first_rung*eta^2, ...) goes on only while its validation score is among the top
1/eta of all trials that reached that rung so far. No trial ever waits for another,
so trials fan out over any number of workers; the first to reach a rung always go
on, because nothing is known yet to judge them by.
"""

import dataclasses
import math
import random
import warnings
from typing import Any

from trainer.ml.config import ConfigError, TrainConfig, coerce

METHODS = ("grid", "random")
METRIC = "val_accuracy"  # what rungs and the best trial are judged by: the Keras log of each epoch
MAX_TRIALS = 100

# A field's values: a list to choose from, or (random only) a range {"low", "high", "log"}.
Space = dict[str, list[Any] | dict[str, Any]]


def trial_params(space: Space, *, method: str, budget: int, seed: int = 0) -> list[dict[str, Any]]:
    """The config fields of each trial, at most `budget` of them (fewer when the grid is smaller)."""
    # scikit-learn and scipy.stats load here, not with the module: every web, worker and
    # command process imports this module, and the two cost 1.6 s of start-up to each.
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    _check(space, method, budget)
    if method == "grid":
        grid = list(ParameterGrid({name: list(values) for name, values in space.items()}))
        everything = range(len(grid))
        picked = sorted(random.Random(seed).sample(everything, budget)) if len(grid) > budget else everything
        return [_rounded(grid[i]) for i in picked]
    distributions = {name: _distribution(name, values) for name, values in space.items()}
    with warnings.catch_warnings():  # a small all-list space: sklearn returns every combination and warns
        warnings.simplefilter("ignore", UserWarning)
        return [_rounded(params) for params in ParameterSampler(distributions, n_iter=budget, random_state=seed)]


def parse_space(lines: list[str]) -> Space:
    """`field = v1, v2, v3` or `field = low..high` (add `log` for a log-uniform range), one per line;
    blank lines and # comments skipped. The values are typed by the config field."""
    space: Space = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name, sep, values = (part.strip() for part in text.partition("="))
        if not sep or not name or not values:
            raise ConfigError(f"line {number}: expected `field = value, value` or `field = low..high`, got {line!r}")
        listed = [v.strip() for v in values.split(",")]
        space[name.replace("-", "_")] = _range(name, values) if ".." in values else listed
    return typed_space(space)


def typed_space(space: Space) -> Space:
    """The space with each value typed as its config field ("0.1" becomes 0.1), or a ConfigError naming it."""
    typed: Space = {}
    for name, values in space.items():
        kind = _field_type(name)
        try:
            if isinstance(values, dict):
                typed[name] = {
                    **values,
                    "low": coerce(kind, values.get("low")),
                    "high": coerce(kind, values.get("high")),
                }
            elif isinstance(values, list) and values:
                typed[name] = [coerce(kind, v) for v in values]
            else:
                raise ValueError("give a list of values or a range")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: {exc}") from exc
    return typed


def typed_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Config fields typed as their TrainConfig field ("2" becomes 2), or a ConfigError naming one."""
    typed = {}
    for name, value in fields.items():
        kind = _field_type(name)
        try:
            typed[name] = coerce(kind, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: {exc}") from exc
    return typed


def _field_type(name: str) -> Any:
    for f in dataclasses.fields(TrainConfig):
        if f.name == name:
            return f.type
    raise ConfigError(f"{name}: not a config field")


def rungs(*, first: int, eta: int, epochs: int) -> list[int]:
    """The epochs at which a trial of `epochs` epochs is judged: first, first*eta, ... before its end."""
    marks, epoch = [], max(first, 1)
    while epoch < epochs:
        marks.append(epoch)
        epoch *= max(eta, 2)
    return marks


def goes_on(score: float, scores_at_rung: list[float], *, eta: int) -> bool:
    """Whether a trial with `score` at a rung (`scores_at_rung`: every trial's there, its own
    included) is among the top 1/eta. Fewer than eta scores: too few to judge, it goes on."""
    if len(scores_at_rung) < eta:
        return True
    keep = max(1, len(scores_at_rung) // eta)
    return score >= sorted(scores_at_rung, reverse=True)[keep - 1]


def rung_cut(scores_at_rung: list[float], *, eta: int) -> float:
    """The lowest score that goes on at a rung (for the message of a trial stopped there)."""
    return sorted(scores_at_rung, reverse=True)[max(1, len(scores_at_rung) // eta) - 1]


def _check(space: Space, method: str, budget: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"method: unknown value {method!r}; choose from {', '.join(METHODS)}")
    if not 1 <= budget <= MAX_TRIALS:
        raise ConfigError(f"budget: must be between 1 and {MAX_TRIALS} trials, got {budget}")
    if not space:
        raise ConfigError("space: name at least one config field and its values")
    if method == "grid" and any(isinstance(v, dict) for v in space.values()):
        raise ConfigError("space: a grid takes lists of values; ranges need method random")


def _distribution(name: str, values: list[Any] | dict[str, Any]) -> Any:
    from scipy.stats import loguniform, randint, uniform  # not at import: see trial_params

    if isinstance(values, list):
        return values
    low, high = values.get("low"), values.get("high")
    if not isinstance(low, int | float) or not isinstance(high, int | float) or not low < high:
        raise ConfigError(f"{name}: a range needs numbers low < high, got {low!r}..{high!r}")
    if isinstance(low, int) and isinstance(high, int) and not values.get("log"):
        return randint(low, high + 1)
    if values.get("log"):
        if low <= 0:
            raise ConfigError(f"{name}: a log range needs low > 0")
        return loguniform(low, high)
    return uniform(low, high - low)


def _range(name: str, text: str) -> dict[str, Any]:
    words = text.split()
    low, _, high = words[0].partition("..")
    if not low or not high or words[1:] not in ([], ["log"]):
        raise ConfigError(f"{name}: expected low..high or low..high log, got {text!r}")
    return {"low": low, "high": high, "log": words[1:] == ["log"]}


def _rounded(params: dict[str, Any]) -> dict[str, Any]:
    # Sampled floats to 4 significant digits: 0.0123 reads better than 0.012345678 and trains the same.
    return {k: float(f"{v:.4g}") if isinstance(v, float) and math.isfinite(v) else _plain(v) for k, v in params.items()}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy ints from randint
