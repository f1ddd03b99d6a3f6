from django import forms
from django.conf import settings


class PredictForm(forms.Form):
    image = forms.FileField(help_text="A JPEG, PNG, GIF, BMP, WebP or TIFF image.")

    def clean_image(self) -> object:
        upload = self.cleaned_data["image"]
        if upload.size > settings.PREDICT_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The file is larger than {settings.PREDICT_MAX_UPLOAD_BYTES // 2**20} MB.")
        return upload
