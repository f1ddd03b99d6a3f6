"""The one typed config of a training run, stored on the job and beside the model."""

import dataclasses
from dataclasses import dataclass
from typing import Any

ARCHITECTURES = ("baseline",)


class ConfigError(ValueError):
    """A config value is out of range or unknown; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "baseline"
    image_size: int = 32
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"arch: unknown architecture {self.arch!r}; choose from {', '.join(ARCHITECTURES)}")
        _check_range("image_size", self.image_size, 24, 512)
        _check_range("epochs", self.epochs, 1, 1000)
        _check_range("batch_size", self.batch_size, 1, 4096)
        if not 0 < self.learning_rate <= 1:
            raise ConfigError("learning_rate: must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(sorted(unknown))}")
        try:
            typed = {k: _coerce(known[k].type, v) for k, v in values.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad config value: {exc}") from exc
        return cls(**typed)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")


def _coerce(kind: Any, value: Any) -> Any:
    # Values come from forms, JSON and the command line; accept "10" for 10.
    if kind in (int, "int"):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if kind in (float, "float"):
        return float(value)
    return str(value)
