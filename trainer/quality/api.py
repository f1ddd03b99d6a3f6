"""Data quality in the API (admins): /api/v1/quality-runs/ starts an analysis of a dataset
and lists them; /api/v1/quality-runs/{id}/ follows one and gives its findings; its
`similar`, `similar-to-upload`, `groups/{n}/keep` and `groups/{n}/move` act on them. Label issues and outliers
are also on the images (`label_issue_quality`, `outlier_score`)."""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from classifier_site.permissions import admin_user
from datasets.imaging import ImageRejected
from datasets.models import Dataset, Image, Split
from trainer.models import QualityRun
from trainer.quality.selectors import (
    SIMILAR_MAX,
    duplicate_groups,
    leak_effect,
    quality_run_list,
    similar_images,
    similar_to_upload,
)
from trainer.quality.services import duplicates_keep_one, duplicates_move, quality_start
from trainer.quality.vectors import VectorsUnavailable


class QualityRunSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(
        read_only=True, allow_null=True, help_text="0 to 1; null until the total is known"
    )

    class Meta:
        model = QualityRun
        fields = ["id", "dataset", "backbone", "image_size", "status", "processed", "total", "skipped", "reused",
                  "progress", "report", "error", "created_at", "started_at", "finished_at"]  # fmt: skip
        read_only_fields = fields


class QualityRunCreateSerializer(serializers.Serializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    backbone = serializers.CharField(
        required=False, default="", allow_blank=True,
        help_text="An installed backbone's name; without it, the dataset's latest transfer-learning backbone.",
    )  # fmt: skip


class SimilarUploadSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="An image file (JPEG, PNG, WebP, ...), checked as any upload is.")
    k = serializers.IntegerField(min_value=1, max_value=SIMILAR_MAX, default=12, help_text="How many neighbours.")


class KeepSerializer(serializers.Serializer):
    image = serializers.IntegerField(help_text="The image of the group to keep; the others are deleted.")


class MoveSerializer(serializers.Serializer):
    split = serializers.ChoiceField(choices=Split.choices)


def _image(image: Image) -> dict[str, Any]:
    return {"id": image.pk, "split": image.split, "label": image.label.name if image.label else None,
            "thumbnail": reverse("datasets:image-file", args=[image.pk, "thumbnail"])}  # fmt: skip


class QualityRunViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                        viewsets.GenericViewSet):  # fmt: skip
    """Analyses of a dataset on its images' backbone features: near-duplicate groups (leaks across
    splits, label conflicts), label issues by confident learning, outliers and small classes."""

    serializer_class = QualityRunSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["dataset", "status"]
    # Set for the upload action only (its route's initkwargs); the other routes keep MAX_BODY_BYTES.
    upload_limit_setting: str | None = None

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return quality_run_list(user=self.request.user)

    @extend_schema(
        request=QualityRunCreateSerializer,
        responses={201: QualityRunSerializer, 400: OpenApiResponse(description="No such backbone, or one running.")},
    )
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        """Analyse a dataset on a worker; poll the run for its progress, then read its findings."""
        incoming = QualityRunCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        run = quality_start(dataset=data["dataset"], backbone=data["backbone"], user=admin_user(request))
        return Response(self.get_serializer(run).data, status.HTTP_201_CREATED)

    def retrieve(self, request: Request, *args: object, **kwargs: object) -> Response:
        """The run, and its near-duplicate groups as the dataset is now, with the leaks' effect on the test score."""
        run = self.get_object()
        groups = duplicate_groups(run)
        effect = leak_effect(run, groups)
        body = self.get_serializer(run).data
        body["groups"] = [{"number": g.number, "leak": g.leak, "conflict": g.conflict,
                           "images": [_image(i) for i in g.images]} for g in groups]  # fmt: skip
        body["leak_effect"] = effect and {"evaluation": effect.evaluation.pk, "accuracy": effect.accuracy,
                                          "accuracy_without_leaks": effect.accuracy_without,
                                          "test_images_removed": effect.removed}  # fmt: skip
        return Response(body)

    @extend_schema(
        parameters=[
            OpenApiParameter("image", int, required=True, description="An analysed image of the dataset."),
            OpenApiParameter("k", int, description=f"How many neighbours (default 12, at most {SIMILAR_MAX})."),
        ],
        responses={200: OpenApiResponse(description="The nearest images, nearest first, with their similarity.")},
    )
    @action(detail=True, methods=["get"])
    def similar(self, request: Request, pk: str | None = None) -> Response:
        """More like this: the images nearest to one image, by cosine similarity of their features."""
        run = self.get_object()
        try:
            image, k = int(request.query_params["image"]), int(request.query_params.get("k", 12))
        except (KeyError, ValueError):
            raise ValidationError({"image": "Give an image id (and k, a whole number)."}) from None
        try:
            found = similar_images(run, image_id=image, k=k)
        except VectorsUnavailable as exc:
            raise ValidationError({"image": str(exc)}) from None
        return Response({"image": image, "results": [{**_image(n.image), "similarity": n.similarity} for n in found]})

    @extend_schema(
        request={"multipart/form-data": SimilarUploadSerializer},
        responses={
            200: OpenApiResponse(description="The nearest images, nearest first, with their similarity."),
            413: OpenApiResponse(description="The file is over PREDICT_MAX_UPLOAD_BYTES."),
        },
    )
    @action(detail=True, methods=["post"], url_path="similar-to-upload", parser_classes=[MultiPartParser, FormParser],
            upload_limit_setting="PREDICT_MAX_UPLOAD_BYTES")  # fmt: skip
    def similar_to_upload(self, request: Request, pk: str | None = None) -> Response:
        """More like this from an uploaded image: its features from the analysis's backbone
        (stored as ONNX), and the dataset's images nearest to them."""
        run = self.get_object()
        incoming = SimilarUploadSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data["image"].read()
        try:
            found = similar_to_upload(run, data=data, k=incoming.validated_data["k"])
        except (ImageRejected, VectorsUnavailable) as exc:
            raise ValidationError({"image": str(exc)}) from None
        return Response({"results": [{**_image(n.image), "similarity": n.similarity} for n in found]})

    @extend_schema(request=KeepSerializer, responses={200: OpenApiResponse(description="How many were deleted.")})
    @action(detail=True, methods=["post"], url_path=r"groups/(?P<group>\d+)/keep")
    def keep(self, request: Request, pk: str | None = None, group: str = "") -> Response:
        """Keep one image of a near-duplicate group; delete the others."""
        incoming = KeepSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        deleted = duplicates_keep_one(run=self.get_object(), group=int(group), keep=incoming.validated_data["image"])
        return Response({"deleted": deleted})

    @extend_schema(request=MoveSerializer, responses={200: OpenApiResponse(description="How many images moved.")})
    @action(detail=True, methods=["post"], url_path=r"groups/(?P<group>\d+)/move")
    def move(self, request: Request, pk: str | None = None, group: str = "") -> Response:
        """Move every image of a near-duplicate group into one split."""
        incoming = MoveSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        moved = duplicates_move(run=self.get_object(), group=int(group), split=incoming.validated_data["split"])
        return Response({"moved": moved})
