from typing import Any

from django import forms

from datasets.models import Dataset, Label


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files from one input (Django's documented pattern)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> Any:
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(d, initial) for d in data]
        return [single(data, initial)] if data else []


class DatasetForm(forms.ModelForm):
    class Meta:
        model = Dataset
        fields = ["name", "description", "val_fraction", "test_fraction", "split_seed"]
        labels = {"val_fraction": "Validation fraction", "test_fraction": "Test fraction"}
        help_texts = {
            "val_fraction": "Share of each class's new images kept for validation (0-0.5).",
            "test_fraction": "Share kept for the final test (0-0.5). Predefined train/val/test folders win.",
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in ("val_fraction", "test_fraction"):
            value = cleaned.get(name)
            if value is not None and not 0 <= value <= 0.5:
                self.add_error(name, "Choose a fraction between 0 and 0.5.")
        return cleaned


class UploadForm(forms.Form):
    archive = forms.FileField(
        required=False,
        help_text="A zip or tar(.gz) of class folders (optionally under train/, val/, test/), a zip with a "
        "CSV manifest (filename,label[,split]) at its top, a zip of unlabelled images, or the CIFAR-10 python tarball.",
    )
    images = MultipleFileField(required=False, help_text="Or pick image files.")
    label = forms.CharField(required=False, max_length=200, help_text="Class for every image (optional).")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if bool(cleaned.get("archive")) == bool(cleaned.get("images")):
            raise forms.ValidationError("Choose either an archive or image files.")
        return cleaned


class LabelRenameForm(forms.Form):
    name = forms.CharField(max_length=200)


class LabelMergeForm(forms.Form):
    into = forms.ModelChoiceField(queryset=Label.objects.none(), label="Merge into")

    def __init__(self, *args: Any, label: Label, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["into"].queryset = Label.objects.filter(dataset=label.dataset_id).exclude(pk=label.pk)  # type: ignore[attr-defined]
