"""Predictions in the API: POST /api/v1/datasets/{id}/predict/ answers with that
dataset's live model, POST /api/v1/predict/ with the one its `dataset` field names
(an id or a name) or, without it, the site's default; GET /api/v1/predict/ lists
the live models a client can choose from."""

import base64
from typing import Any

from django.conf import settings
from django.core.exceptions import TooManyFilesSent
from django.core.files.uploadedfile import UploadedFile
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import permissions, serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from classification.capture import capture_answers
from classification.predictor import NotServed, Prediction, get_predictor
from classifier_site import throttling
from classifier_site.throttling import parse_rate
from classifier_site.uploads import too_large
from datasets.imaging import ImageRejected, TooManyPixels, VectorImageRejected, decode_image
from datasets.selectors import dataset_find
from trainer.models import ModelVersion
from trainer.registry.files import NoModelAvailable
from trainer.registry.selectors import model_versions_live, served_table


class PredictPermission(permissions.BasePermission):
    """Signed-in users; anyone when PREDICT_ALLOW_ANONYMOUS is on."""

    def has_permission(self, request: Request, view: object) -> bool:
        return bool(settings.PREDICT_ALLOW_ANONYMOUS or (request.user and request.user.is_authenticated))


class PredictThrottle(BaseThrottle):
    """PREDICT_THROTTLE_RATE per user, PREDICT_ANON_THROTTLE_RATE per IP address for
    anonymous clients, read at each request (settings apply without a restart).

    A fixed-window count per user across every process (classifier_site.throttling: leases
    from the shared "throttle" cache, so a request rarely pays a shared round trip). DRF's
    sliding-window throttles keep a timestamp per request and rewrite the whole list each
    time, which costs milliseconds at the rates a prediction API serves. The price: a burst
    may straddle two windows.
    """

    def allow_request(self, request: Request, view: object) -> bool:
        anonymous = not (request.user and request.user.is_authenticated)
        limit, duration = parse_rate(
            settings.PREDICT_ANON_THROTTLE_RATE if anonymous else settings.PREDICT_THROTTLE_RATE
        )
        if limit is None:
            return True
        ident = self.get_ident(request) if anonymous else request.user.pk
        verdict = throttling.take("predict", ident, limit, duration)
        self._wait = verdict.wait
        return verdict.allowed

    def wait(self) -> float:
        return max(self._wait, 1.0)


def throttle_key(ident: object, window: int) -> str:
    return f"throttle:predict:{ident}:{window}"


class PredictRequestSerializer(serializers.Serializer):
    dataset = serializers.CharField(
        required=False,
        help_text="The dataset whose live model answers (id or name); without it, the site's default. "
        "Not used by /api/v1/datasets/{id}/predict/, which names it in the path.",
    )
    image = serializers.FileField(required=False, help_text="One image: the answer is one prediction object.")
    images = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        help_text="One or more images (repeat the field): the answer lists one result per image, in order.",
    )
    top_k = serializers.IntegerField(min_value=1, max_value=100, default=5)
    explain = serializers.BooleanField(
        default=False,
        help_text="Also say where the model looked for its best class (occlusion: grey windows slid over the image), "
        "for at most PREDICT_EXPLAIN_MAX_IMAGES images. Also accepted in the query string.",
    )


class ExplanationSerializer(serializers.Serializer):
    method = serializers.CharField(help_text='"occlusion"')
    label = serializers.CharField(help_text="The class explained: the most probable one.")
    grid = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()),
        help_text="8 x 8 cells, rows from the top: how much hiding each lowered the class's probability, 0 to 1.",
    )
    png = serializers.CharField(help_text="Base64 PNG: the image as the model saw it, the map over it (red: mattered).")


class ClassScoreSerializer(serializers.Serializer):
    label = serializers.CharField()
    probability = serializers.FloatField()


class DatasetRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class ServingVersionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    arch = serializers.CharField()
    dataset = serializers.CharField(help_text="The dataset's name (its id is in the answer's `dataset`).")
    sha256 = serializers.CharField()
    rejection_threshold = serializers.FloatField()


class ImageResultSerializer(serializers.Serializer):
    filename = serializers.CharField(required=False)
    label = serializers.CharField(help_text='The best class, or "unknown" below the rejection threshold.')
    unknown = serializers.BooleanField()
    predictions = ClassScoreSerializer(many=True, help_text="The top_k classes, most probable first.")
    explanation = ExplanationSerializer(required=False, help_text="With explain=true only.")


class PredictionSerializer(ImageResultSerializer):
    dataset = DatasetRefSerializer(help_text="The dataset whose live model answered.")
    model_version = ServingVersionSerializer(help_text="The version that computed the answer.")


class BatchPredictionSerializer(serializers.Serializer):
    dataset = DatasetRefSerializer(help_text="The dataset whose live model answered.")
    model_version = ServingVersionSerializer(help_text="The version that computed the answers.")
    results = ImageResultSerializer(many=True)


class LiveModelSerializer(serializers.Serializer):
    dataset = DatasetRefSerializer()
    model_version = ServingVersionSerializer()
    classes = serializers.ListField(child=serializers.CharField())
    image_size = serializers.IntegerField()
    default = serializers.BooleanField(help_text="Answers requests that name no dataset.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


_DATASET = {"id": 3, "name": "cifar10"}
_VERSION = {"id": 7, "name": "v7 · resnet · cifar10", "arch": "resnet", "dataset": "cifar10",
            "sha256": "9f2c…", "rejection_threshold": 0.42}  # fmt: skip
_SCORES = [{"label": "cat", "probability": 0.91}, {"label": "dog", "probability": 0.06}]
_RESULTS = [
    {"label": "cat", "unknown": False, "predictions": _SCORES},
    {"filename": "b.png", "label": "unknown", "unknown": True,
     "predictions": [{"label": "ship", "probability": 0.31}, {"label": "truck", "probability": 0.29}]},
]  # fmt: skip


def _error(description: str, message: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description, [OpenApiExample(description, {"detail": message})])


_ANSWER = PolymorphicProxySerializer(
    component_name="PredictAnswer",
    serializers=[PredictionSerializer, BatchPredictionSerializer],
    resource_type_field_name=None,
    many=False,
)
_RESPONSES = {
    200: OpenApiResponse(
        _ANSWER,
        "`image`: one prediction (PredictionSerializer's shape). `images`: one result per image, in order, "
        "under `results` (BatchPrediction's shape). Both name the dataset and the version that answered.",
        [
            OpenApiExample("image", {"dataset": _DATASET, "model_version": _VERSION, **_RESULTS[0]}),
            OpenApiExample(
                "images",
                {
                    "dataset": _DATASET,
                    "model_version": _VERSION,
                    "results": [{"filename": "a.jpg", **_RESULTS[0]}, _RESULTS[1]],
                },
            ),
        ],
    ),
    400: _error("Corrupt or unsupported image, no image, or a bad top_k", "b.png: not a usable image: not an image."),
    401: _error("Not signed in", "Authentication credentials were not provided."),
    404: _error("No such dataset", "No dataset 'flowers'."),
    413: _error(
        "Request too large, too many images, or too many pixels in all",
        "Too many images: at most 16 per request.",
    ),
    415: _error("SVG image", "logo.svg: SVG is not supported: send a PNG, JPEG, GIF, BMP, WebP or TIFF image."),
    429: _error("Throttled", "Request was throttled. Expected available in 3 seconds."),
    503: _error(
        "No live model (for that dataset), or it cannot be loaded",
        "Dataset 'flowers' has no live model: train one on it, then promote it.",
    ),
}


class PredictView(APIView):
    upload_limit_setting = "PREDICT_MAX_UPLOAD_BYTES"  # classifier_site.uploads.BodyGate: before the body is read
    anonymous_upload_setting = "PREDICT_ALLOW_ANONYMOUS"
    parser_classes = [MultiPartParser, FormParser]
    renderer_classes = [JSONRenderer]  # an API of one format: no browsable-API negotiation
    permission_classes = [PredictPermission]
    throttle_classes = [PredictThrottle]

    @extend_schema(
        summary="The live models a prediction can ask for",
        responses={200: LiveModelSerializer(many=True), 401: _RESPONSES[401]},
    )
    def get(self, request: Request) -> Response:
        default = served_table().default
        return Response([_live_json(version, default) for version in model_versions_live()])

    @extend_schema(
        summary="Classify images with a dataset's live model (the default's without `dataset`)",
        request={"multipart/form-data": PredictRequestSerializer},
        parameters=[OpenApiParameter("dataset", str, description="Also accepted in the query string.")],
        responses=_RESPONSES,
    )
    def post(self, request: Request) -> Response:
        return self.answer(request, None)

    def answer(self, request: Request, dataset: int | str | None) -> Response:
        """`dataset`: from the path; None reads the `dataset` field or query parameter."""
        if too_large(request._request, settings.PREDICT_MAX_UPLOAD_BYTES):  # before the body is read
            return _detail(f"The upload is larger than {settings.PREDICT_MAX_UPLOAD_BYTES / 2**20:,.0f} MB.", 413)
        # Django's own multipart parsing, not DRF's layer over it: this is the hot path.
        try:
            form, files = request._request.POST, request._request.FILES
        except TooManyFilesSent:
            return _detail(f"Too many images: at most {settings.PREDICT_MAX_IMAGES} per request.", 413)
        if dataset is None:
            dataset = form.get("dataset") or request.query_params.get("dataset") or None
        if len(files.getlist("image")) > 1 or ("image" in files and "images" in files):
            return _detail('Send one file as "image", or several as "images" (not both).', 400)
        single = files.get("image")
        uploads: list[UploadedFile] = [single] if single else files.getlist("images")
        if not uploads:
            return _detail('Send an image as the multipart field "image" (or several as "images").', 400)
        if len(uploads) > settings.PREDICT_MAX_IMAGES:
            return _detail(f"Too many images: at most {settings.PREDICT_MAX_IMAGES} per request.", 413)
        top_k = _top_k(form.get("top_k") or request.query_params.get("top_k"))
        if top_k is None:
            return _detail("top_k must be a whole number from 1 to 100.", 400)
        explain = _flag(form.get("explain") or request.query_params.get("explain"))
        if explain is None:
            return _detail("explain must be true or false.", 400)
        if explain and len(uploads) > settings.PREDICT_EXPLAIN_MAX_IMAGES:
            return _detail(f"explain=true takes at most {settings.PREDICT_EXPLAIN_MAX_IMAGES} images a request.", 400)
        images = [upload.read() for upload in uploads]
        try:
            results = get_predictor().predict_many(images, dataset=dataset, top_k=top_k, explain=explain)
        except TooManyPixels as exc:
            return _detail(str(exc), 413)
        except ImageRejected:
            return _rejected(uploads, images)
        except NotServed as exc:
            if dataset_find(str(exc.dataset)) is None:
                return _detail(f"No dataset {exc.dataset!r}.", 404)
            return _detail(str(exc), 503)
        except NoModelAvailable as exc:
            return _detail(str(exc), 503)
        capture_answers(results, [(u.name or "", data) for u, data in zip(uploads, images, strict=True)])
        answered = {"dataset": _dataset_json(results[0]), "model_version": _version_json(results[0])}
        if single:
            return Response({**answered, **_result_json(results[0])})
        named = [{"filename": u.name, **_result_json(r)} for u, r in zip(uploads, results, strict=True)]
        return Response({**answered, "results": named})


class DatasetPredictView(PredictView):
    """The same answers, with the dataset named in the path."""

    http_method_names = ["post", "options"]

    @extend_schema(
        summary="Classify images with this dataset's live model",
        request={"multipart/form-data": PredictRequestSerializer},
        responses=_RESPONSES,
    )
    def post(self, request: Request, dataset_id: int) -> Response:  # type: ignore[override]
        return self.answer(request, dataset_id)


def _top_k(raw: Any) -> int | None:
    if raw in (None, ""):
        return 5
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    return value if 1 <= value <= 100 else None


def _flag(raw: Any) -> bool | None:
    """A boolean form or query field, in the words DRF's BooleanField takes: absent is False;
    anything else is None."""
    if raw in (None, ""):
        return False
    word = str(raw).strip().lower()
    field = serializers.BooleanField
    return True if word in field.TRUE_VALUES else False if word in field.FALSE_VALUES else None


def _rejected(uploads: list[UploadedFile], images: list[bytes]) -> Response:
    """Name the first image that failed, and why; SVG gets 415."""
    for upload, data in zip(uploads, images, strict=True):
        try:
            decode_image(data, max_pixels=settings.MAX_IMAGE_PIXELS)
        except VectorImageRejected as exc:
            return _detail(f"{upload.name}: {exc}.", 415)
        except ImageRejected as exc:
            return _detail(f"{upload.name}: not a usable image: {exc}.", 400)
    return _detail("Not a usable image.", 400)


def _detail(message: str, code: int) -> Response:
    return Response({"detail": message}, status=code)


# Built by hand, not by serializers: this is the hot path, and the shape is fixed.
def _version_json(prediction: Prediction) -> dict[str, Any]:
    return _version_fields(prediction.version, prediction.threshold)


def _version_fields(version: ModelVersion, threshold: float) -> dict[str, Any]:
    return {
        "id": version.pk,
        "name": version.name,
        "arch": version.arch,
        "dataset": version.dataset.name,
        "sha256": version.sha256,
        "rejection_threshold": threshold,
    }


def _dataset_json(prediction: Prediction) -> dict[str, Any]:
    return {"id": prediction.version.dataset_id, "name": prediction.version.dataset.name}


def _live_json(version: ModelVersion, default: int | None) -> dict[str, Any]:
    return {
        "dataset": {"id": version.dataset_id, "name": version.dataset.name},
        "model_version": _version_fields(version, version.rejection_threshold),
        "classes": version.classes,
        "image_size": version.image_size,
        "default": version.dataset_id == default,
    }


def _result_json(prediction: Prediction) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "label": prediction.label,
        "unknown": prediction.is_unknown,
        "predictions": [{"label": s.label, "probability": s.probability} for s in prediction.scores],
    }
    if (why := prediction.explanation) is not None:
        answer["explanation"] = {"method": "occlusion", "label": why.label, "grid": why.grid.round(3).tolist(),
                                 "png": base64.b64encode(why.png).decode()}  # fmt: skip
    return answer
