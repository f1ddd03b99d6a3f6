"""Learning from production in the API (admins): GET /api/v1/datasets/{id}/live-capture/
says whether the dataset keeps a sample of its live predictions and how many wait for a
label; PUT turns it on or off and sets the share of confident answers kept."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from classification.capture import capture_set
from classification.drift import capture_counts
from classification.models import LiveCapture
from datasets.models import Dataset


class LiveCaptureSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(help_text="Keep a sample of the live predictions (off by default).")
    share = serializers.FloatField(
        min_value=0.0, max_value=1.0, default=0.05,
        help_text="Of the answers at or above the rejection threshold, the share kept; every one below is kept.",
    )  # fmt: skip
    kept = serializers.IntegerField(read_only=True, help_text="Answers kept so far.")
    waiting = serializers.IntegerField(read_only=True, help_text="Their images still unlabelled in the dataset.")


class LiveCaptureView(APIView):
    permission_classes = [permissions.IsAdminUser]

    @extend_schema(responses={200: LiveCaptureSerializer})
    def get(self, request: Request, dataset_id: int) -> Response:
        """Whether the dataset learns from production, and what it kept."""
        return Response(_state(get_object_or_404(Dataset, pk=dataset_id)))

    @extend_schema(
        request=LiveCaptureSerializer,
        responses={
            200: LiveCaptureSerializer,
            400: OpenApiResponse(description="No `enabled`, or a share outside 0-1."),
        },
    )
    def put(self, request: Request, dataset_id: int) -> Response:
        """Turn learning from production on or off for the dataset."""
        dataset = get_object_or_404(Dataset, pk=dataset_id)
        incoming = LiveCaptureSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        capture_set(dataset=dataset, enabled=incoming.validated_data["enabled"], share=incoming.validated_data["share"])
        return Response(_state(dataset))


def _state(dataset: Dataset) -> dict[str, object]:
    capture = LiveCapture.objects.filter(dataset=dataset).first()
    kept, waiting = capture_counts(dataset=dataset)
    return {"enabled": bool(capture and capture.enabled), "share": capture.share if capture else 0.05,
            "kept": kept, "waiting": waiting}  # fmt: skip
