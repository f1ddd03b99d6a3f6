from django import forms

from datasets.models import Dataset
from trainer.ml.config import ARCHITECTURES, ConfigError, TrainConfig

_DEFAULTS = TrainConfig()


class TrainingJobForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    arch = forms.ChoiceField(choices=[(a, a) for a in ARCHITECTURES], initial=_DEFAULTS.arch, label="Architecture")
    epochs = forms.IntegerField(min_value=1, max_value=1000, initial=_DEFAULTS.epochs)
    batch_size = forms.IntegerField(min_value=1, max_value=4096, initial=_DEFAULTS.batch_size)
    learning_rate = forms.FloatField(min_value=1e-6, max_value=1.0, initial=_DEFAULTS.learning_rate)
    image_size = forms.IntegerField(min_value=24, max_value=512, initial=_DEFAULTS.image_size)
    seed = forms.IntegerField(min_value=0, initial=_DEFAULTS.seed)

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if not self.errors:
            try:
                self.config = TrainConfig.from_dict({k: v for k, v in cleaned.items() if k != "dataset"})
            except ConfigError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return cleaned
