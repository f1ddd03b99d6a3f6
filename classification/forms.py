from collections.abc import Sequence

from django import forms
from django.conf import settings

from datasets.models import Dataset
from trainer.models import ModelVersion


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """One or many files from one input (Django's documented pattern)."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True, "accept": "image/*"}))
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def clean(self, data: object, initial: object = None) -> list[object]:
        single = super().clean
        files = data if isinstance(data, list | tuple) else [data]
        return [single(item, initial) for item in files if item] or [single(None, initial)]


class PredictForm(forms.Form):
    dataset = forms.TypedChoiceField(coerce=int, label="Model", required=False)
    images = MultipleImageField(
        label="Images", help_text="JPEG, PNG, GIF, BMP, WebP or TIFF; pick or drop one or many."
    )

    def __init__(self, *args: object, live: Sequence[ModelVersion] = (), **kwargs: object) -> None:
        """`live`: one choice per dataset with a live model."""
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        choices = [(v.dataset_id, f"{v.dataset.name} (v{v.pk} · {v.arch})") for v in live]
        self.fields["dataset"].choices = choices  # type: ignore[attr-defined]

    def clean_images(self) -> list[object]:
        uploads = self.cleaned_data["images"]
        if len(uploads) > settings.PREDICT_MAX_IMAGES:
            raise forms.ValidationError(f"Too many images: at most {settings.PREDICT_MAX_IMAGES} at once.")
        return uploads


class CorrectionForm(forms.Form):
    """ "Wrong?": the right class for an image the model just saw, and the dataset it joins."""

    image_data = forms.CharField(widget=forms.HiddenInput)  # base64 of the image, sent back from the page
    filename = forms.CharField(max_length=200, widget=forms.HiddenInput)
    label = forms.CharField(max_length=200, label="Right class")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), label="Add to dataset")

    def __init__(self, *args: object, datasets: object = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if datasets is not None:
            self.fields["dataset"].queryset = datasets  # type: ignore[attr-defined]
