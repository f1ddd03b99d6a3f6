"""The new-job form: one field per TrainConfig field, built from the dataclass so
the form, the API and the `train` command can never disagree."""

import dataclasses
from typing import Any

from django import forms

from datasets.models import Dataset
from trainer.ml.config import BASIC_FIELDS, CHOICES, HELP, ConfigError, TrainConfig, architectures


def config_field(field: dataclasses.Field[Any], initial: Any) -> forms.Field:
    label = field.name.replace("_", " ").capitalize()
    # Not required: a value left out takes the chosen architecture's default.
    common: dict[str, Any] = {
        "label": label,
        "initial": initial,
        "help_text": HELP.get(field.name, ""),
        "required": False,
    }
    if field.name in CHOICES:
        # Backbone files an operator installed are architectures too.
        choices = architectures() if field.name == "arch" else CHOICES[field.name]
        return forms.ChoiceField(choices=[(c, c) for c in choices], **common)
    if field.type in (bool, "bool"):
        return forms.BooleanField(**common)
    if field.type in (int, "int"):
        return forms.IntegerField(min_value=0, **common)
    return forms.FloatField(min_value=0, **common)


NOT_CONFIG = ("dataset", "request_key")


class TrainingJobForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    # A fresh key each time the form is shown: a double click sends it twice, and gets one job.
    request_key = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = TrainConfig.defaults()
        for field in dataclasses.fields(TrainConfig):
            self.fields[field.name] = config_field(field, getattr(defaults, field.name))

    def basic_fields(self) -> list[forms.BoundField]:
        return [self["dataset"], *(self[name] for name in BASIC_FIELDS)]

    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[f.name] for f in dataclasses.fields(TrainConfig) if f.name not in BASIC_FIELDS]

    @staticmethod
    def presets() -> dict[str, dict[str, Any]]:
        """Each architecture's defaults: picking an architecture fills them in."""
        return {arch: TrainConfig.defaults(arch).to_dict() for arch in architectures()}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not self.errors:
            try:
                given = {k: v for k, v in cleaned.items() if k not in NOT_CONFIG and v not in (None, "")}
                self.config = TrainConfig.from_dict(given)
            except ConfigError as exc:
                # Messages start with the field's name: show them beside that field.
                name = str(exc).split(":", 1)[0]
                self.add_error(name if name in self.fields else None, str(exc))
        return cleaned
