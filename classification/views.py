"""The prediction page (a model picker: one entry per dataset with a live model,
remembered in the session), and "wrong?" corrections that add an image to a dataset."""

import base64
import binascii
from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from classification.api import PredictThrottle
from classification.capture import capture_answers, capture_set
from classification.drift import drift
from classification.forms import CorrectionForm, PredictForm
from classification.predictor import Prediction, get_predictor
from classifier_site.errors import Refused
from classifier_site.permissions import is_admin
from classifier_site.uploads import anonymous_uploads, limit_upload
from datasets.imaging import ImageRejected, TooManyPixels, decode_image
from datasets.labelling import image_add_correction
from datasets.selectors import dataset_get, dataset_list
from trainer.models import ModelVersion
from trainer.registry.files import NoModelAvailable
from trainer.registry.selectors import model_versions_live

# Images up to this size are shown back and can be sent back as a correction.
ECHO_MAX_BYTES = 2 * 1024 * 1024
CHOSEN_KEY = "predict_dataset"  # session key: the dataset last picked on the page


@dataclass
class PageResult:
    filename: str
    prediction: Prediction | None = None
    error: str = ""
    data_b64: str = ""  # the image, shown back beside its answer

    @property
    def explanation_b64(self) -> str:
        """Where the model looked, as the page shows it (a few images a request are explained)."""
        why = self.prediction.explanation if self.prediction else None
        return base64.b64encode(why.png).decode() if why else ""


@anonymous_uploads("PREDICT_ALLOW_ANONYMOUS")
@limit_upload("PREDICT_MAX_UPLOAD_BYTES")
def predict_view(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_authenticated or settings.PREDICT_ALLOW_ANONYMOUS):
        return redirect_to_login(request.get_full_path())
    if request.method == "POST":  # the API's throttle and counters: one budget per user, page or API
        throttle = PredictThrottle()
        if not throttle.allow_request(request, None):  # type: ignore[arg-type]
            wait = int(throttle.wait() + 0.999)
            page = render(
                request, "refused.html", {"message": f"Too many predictions: try again in {wait} s."}, status=429
            )
            page["Retry-After"] = str(wait)
            return page
    return _predict_page(request)


def _predict_page(request: HttpRequest) -> HttpResponse:
    live = model_versions_live()
    chosen = _chosen(request, live)
    form = PredictForm(request.POST or None, request.FILES or None, live=live, initial={"dataset": chosen})
    results: list[PageResult] = []
    status: int | None = None
    if request.method == "POST" and form.is_valid():
        chosen = form.cleaned_data["dataset"] or chosen
        request.session[CHOSEN_KEY] = chosen
        try:
            results = _classify([(f.name, f.read()) for f in form.cleaned_data["images"]], chosen)
        except (NoModelAvailable, TooManyPixels) as exc:
            form.add_error(None, str(exc))
            status = 413 if isinstance(exc, TooManyPixels) else None
    admin = is_admin(request.user)
    context = {
        "form": form,
        "live": live,
        "serving": next((v for v in live if v.dataset_id == chosen), None),
        "results": results,
        "datasets": dataset_list(user=request.user) if admin else [],
        "can_correct": admin,
        "max_images": settings.PREDICT_MAX_IMAGES,
    }
    failed = form.errors or (results and all(r.error for r in results))
    return render(request, "classification/predict.html", context, status=status or (400 if failed else 200))


def _chosen(request: HttpRequest, live: list[ModelVersion]) -> int | None:
    """The dataset to answer with: `?dataset=` (a link from the dashboard), else the
    one last picked in this session, else the site's default (listed first)."""
    ids = [v.dataset_id for v in live]
    asked = request.GET.get("dataset", "")
    if asked.isdigit() and int(asked) in ids:
        request.session[CHOSEN_KEY] = int(asked)
        return int(asked)
    remembered = request.session.get(CHOSEN_KEY)
    if remembered in ids:
        return int(remembered)
    return ids[0] if ids else None


def _classify(files: list[tuple[str, bytes]], dataset: int | None) -> list[PageResult]:
    """Answers for the good images in one batch; a reason for each bad one."""
    results = [PageResult(filename=name) for name, _ in files]
    good: list[tuple[PageResult, bytes]] = []
    for result, (_, data) in zip(results, files, strict=True):
        try:
            decode_image(data, max_pixels=settings.MAX_IMAGE_PIXELS)
        except ImageRejected as exc:
            result.error = f"Not a usable image: {exc}."
            continue
        good.append((result, data))
        if len(data) <= ECHO_MAX_BYTES:
            result.data_b64 = base64.b64encode(data).decode()
    if good:
        explain = len(good) <= settings.PREDICT_EXPLAIN_MAX_IMAGES
        predictions = get_predictor().predict_many([d for _, d in good], dataset=dataset, top_k=5, explain=explain)
        for (result, _), prediction in zip(good, predictions, strict=True):
            result.prediction = prediction
        capture_answers(predictions, [(result.filename, data) for result, data in good])
    return results


@staff_member_required
@require_POST
def correction_view(request: HttpRequest) -> HttpResponse:
    """Adds the image the user says the model got wrong to a dataset, with the right class."""
    form = CorrectionForm(request.POST, datasets=dataset_list(user=request.user))
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(map(str, e))}" for field, e in form.errors.items())
        messages.error(request, f"Correction not saved: {errors}")
        return redirect("classification:predict")
    try:
        data = base64.b64decode(form.cleaned_data["image_data"], validate=True)
        if len(data) > ECHO_MAX_BYTES:
            raise ValueError(f"the image is larger than {ECHO_MAX_BYTES // 2**20} MB")
        added = image_add_correction(
            dataset=form.cleaned_data["dataset"],
            filename=form.cleaned_data["filename"],
            data=data,
            label_name=form.cleaned_data["label"],
            user=request.user,
        )
    except (binascii.Error, ValueError) as exc:  # ImageRejected and bad class names are ValueErrors
        messages.error(request, f"Correction not saved: {exc}")
        return redirect("classification:predict")
    messages.success(request, added)
    return redirect("classification:predict")


@staff_member_required
def live_view(request: HttpRequest, dataset_pk: int) -> HttpResponse:
    """Learning from production for one dataset: the opt-in, what was kept, the drift panel."""
    dataset = dataset_get(user=request.user, pk=dataset_pk)
    if request.method == "POST":
        try:
            share = float(request.POST.get("share", "0.05"))
            capture_set(dataset=dataset, enabled=request.POST.get("enabled") == "on", share=share)
        except (Refused, ValueError) as exc:
            messages.error(request, str(exc) if isinstance(exc, Refused) else "The share must be a number.")
        else:
            messages.success(request, "Saved.")
        return redirect("classification:live", dataset.pk)
    context = {"dataset": dataset, "drift": drift(dataset=dataset), "retention_days": settings.CAPTURE_RETENTION_DAYS}
    return render(request, "classification/live.html", context)
