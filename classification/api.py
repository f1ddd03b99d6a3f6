"""POST /api/v1/predict/: top classes of an uploaded image from the serving model."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from classification.predictor import NoModelAvailable, Prediction, get_predictor
from classifier_site.uploads import payload_too_large, too_large
from datasets.imaging import ImageRejected


class PredictRequestSerializer(serializers.Serializer):
    image = serializers.FileField()
    top_k = serializers.IntegerField(min_value=1, max_value=100, default=5)


class ClassScoreSerializer(serializers.Serializer):
    label = serializers.CharField()
    probability = serializers.FloatField()


class ServingVersionSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    name = serializers.CharField()
    arch = serializers.CharField()
    dataset = serializers.CharField(source="dataset.name")
    sha256 = serializers.CharField()


class PredictionSerializer(serializers.Serializer):
    model_version = ServingVersionSerializer(source="version")
    predictions = ClassScoreSerializer(source="scores", many=True)


class PredictView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request=PredictRequestSerializer, responses={200: PredictionSerializer})
    def post(self, request: Request) -> Response:
        if too_large(request._request, settings.PREDICT_MAX_UPLOAD_BYTES):  # before the body is read
            return payload_too_large(request._request, settings.PREDICT_MAX_UPLOAD_BYTES)  # type: ignore[return-value]
        incoming = PredictRequestSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        upload = incoming.validated_data["image"]
        if upload.size > settings.PREDICT_MAX_UPLOAD_BYTES:
            limit = settings.PREDICT_MAX_UPLOAD_BYTES // 2**20
            return Response({"detail": f"Image larger than {limit} MB."}, status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        try:
            prediction: Prediction = get_predictor().predict(upload.read(), top_k=incoming.validated_data["top_k"])
        except ImageRejected as exc:
            return Response({"detail": f"Not a usable image: {exc}."}, status.HTTP_400_BAD_REQUEST)
        except NoModelAvailable as exc:
            return Response({"detail": str(exc)}, status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(PredictionSerializer(prediction).data)
