"""The new-sweep form: the dataset, the fields every trial shares, and the space as
`field = values` lines (the same syntax as the `sweep` command's --param)."""

from typing import Any

from django import forms

from datasets.models import Dataset
from trainer.ml.config import ConfigError
from trainer.ml.sweep import MAX_TRIALS, METHODS, parse_space

SPACE_HELP = (
    "One config field per line: `learning_rate = 0.1, 0.2, 0.4` to choose from, or (random) "
    "`weight_decay = 0.0001..0.01 log` for a range."
)


def _key_values(text: str) -> dict[str, str]:
    pairs = [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    if bad := [p for p in pairs if "=" not in p]:
        raise forms.ValidationError(f"expected field=value, got {bad[0]!r}")
    return {k.strip().replace("-", "_"): v.strip() for k, _, v in (p.partition("=") for p in pairs)}


class SweepForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    space = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), help_text=SPACE_HELP,
                            initial="learning_rate = 0.1, 0.4\nweight_decay = 0.0005, 0.005")  # fmt: skip
    base = forms.CharField(required=False, label="Every trial",
                           help_text="Config fields all trials share, e.g. `arch=resnet, epochs=9`; "
                           "the rest take each architecture's defaults.", initial="arch=resnet, epochs=9")  # fmt: skip
    method = forms.ChoiceField(choices=[(m, m) for m in METHODS], initial="grid")
    budget = forms.IntegerField(min_value=1, max_value=MAX_TRIALS, initial=8, help_text="The most trials.")
    early_stopping = forms.BooleanField(required=False, initial=True,
                                        help_text="Successive halving: at each rung (epoch 1, 3, 9, ...) only "
                                        "the top third of the trials that got there go on.")  # fmt: skip
    promote_best = forms.BooleanField(required=False, help_text="Promote the best trial's model when the sweep ends "
                                      "(the macro-F1 gate still applies).")  # fmt: skip

    def clean_space(self) -> Any:
        try:
            return parse_space(self.cleaned_data["space"].splitlines())
        except ConfigError as exc:
            raise forms.ValidationError(str(exc)) from exc

    def clean_base(self) -> dict[str, str]:
        return _key_values(self.cleaned_data.get("base") or "")
