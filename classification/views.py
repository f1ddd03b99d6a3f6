"""The prediction page."""

import base64

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from classification.forms import PredictForm
from classification.predictor import NoModelAvailable, get_predictor
from classifier_site.uploads import limit_upload
from datasets.imaging import ImageRejected
from trainer.selectors import model_version_serving


@login_required
@limit_upload("PREDICT_MAX_UPLOAD_BYTES")
def predict_view(request: HttpRequest) -> HttpResponse:
    form = PredictForm(request.POST or None, request.FILES or None)
    context: dict[str, object] = {"form": form, "serving": model_version_serving()}
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data["image"].read()
        try:
            context["prediction"] = get_predictor().predict(data, top_k=5)
            # Shown back beside the answer; it was just decoded, so it is a real image.
            context["preview"] = base64.b64encode(data).decode() if len(data) < 2**20 else None
        except (ImageRejected, NoModelAvailable) as exc:
            form.add_error("image" if isinstance(exc, ImageRejected) else None, str(exc))
    status = 400 if form.errors else 200
    return render(request, "classification/predict.html", context, status=status)
