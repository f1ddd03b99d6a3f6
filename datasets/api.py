"""Dataset API (admins): datasets, images, labels (classes) and imports under /api/v1/."""

from typing import Any

import django_filters
from django.conf import settings
from django.core.cache import cache
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from classifier_site import throttling
from classifier_site.permissions import admin_user
from classifier_site.uploads import payload_too_large, too_large
from datasets.export_api import DatasetExportActions
from datasets.labelling import LabelConflict, image_label_set, label_delete, label_merge
from datasets.labelling_api import LabellingActions, conflict_response
from datasets.models import ChangeSource, Dataset, DatasetImport, Image, Label
from datasets.selectors import WORKBENCH_ORDERS, dataset_class_counts, dataset_list, workbench_ordering
from datasets.services import (
    clean_label_name,
    dataset_create,
    image_review_set,
    images_delete,
    import_create,
    import_create_from_files,
    import_progress_key,
    import_retry,
    label_create,
    label_rename,
)


class DatasetSerializer(serializers.ModelSerializer):
    image_count = serializers.IntegerField(read_only=True)
    label_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "val_fraction", "test_fraction", "split_seed", "image_count",
                  "label_count", "created_at"]  # fmt: skip

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for name in ("val_fraction", "test_fraction"):
            if name in attrs and not 0 <= attrs[name] <= 0.5:
                raise serializers.ValidationError({name: "Choose a fraction between 0 and 0.5."})
        return attrs


class DatasetViewSet(
    LabellingActions, DatasetExportActions, mixins.CreateModelMixin, mixins.ListModelMixin,
    mixins.RetrieveModelMixin, viewsets.GenericViewSet,
):  # fmt: skip
    serializer_class = DatasetSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["name"]

    def get_queryset(self) -> QuerySet[Dataset]:
        return dataset_list(user=self.request.user)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = dataset_create(**serializer.validated_data, user=admin_user(self.request))

    def retrieve(self, request: Request, *args: object, **kwargs: object) -> Response:
        dataset = self.get_object()
        data = dict(self.get_serializer(dataset).data)
        data["classes"] = [
            {"name": c.name, "train": c.train, "val": c.val, "test": c.test}
            for c in dataset_class_counts(dataset=dataset)
        ]
        return Response(data)


class ImageFilter(django_filters.FilterSet):
    unlabelled = django_filters.BooleanFilter(field_name="label", lookup_expr="isnull", label="Only unlabelled images")
    min_confidence = django_filters.NumberFilter(field_name="suggestion_confidence", lookup_expr="gte")
    max_confidence = django_filters.NumberFilter(field_name="suggestion_confidence", lookup_expr="lt")
    order = django_filters.ChoiceFilter(
        choices=WORKBENCH_ORDERS, method="order_by", label="Active learning: least sure first"
    )

    class Meta:
        model = Image
        fields = ["dataset", "label", "split", "unlabelled", "needs_review", "suggestion"]

    def order_by(self, images: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        return images.order_by(*workbench_ordering(value))


class ImageSerializer(serializers.ModelSerializer):
    label_name = serializers.CharField(source="label.name", read_only=True, default=None)
    suggestion_model = serializers.IntegerField(
        source="suggestion_version", read_only=True, allow_null=True,
        help_text="Id of the model version that made the suggestion (/api/v1/models/<id>/).",
    )  # fmt: skip
    label_version = serializers.IntegerField(
        min_value=0, required=False,
        help_text="Optimistic lock: send the version you read with a new label; a newer one gets 409.",
    )  # fmt: skip

    class Meta:
        model = Image
        fields = ["id", "dataset", "label", "label_name", "label_version", "label_checked", "split", "needs_review",
                  "suggestion", "suggestion_confidence", "suggestion_margin", "suggestion_entropy",
                  "suggestion_model", "label_issue_quality", "label_issue_suggestion", "outlier_score",
                  "width", "height", "sha256", "original_name", "created_at"]  # fmt: skip
        read_only_fields = [f for f in fields if f not in ("label", "label_version", "needs_review")]

    def validate_label(self, label: Label | None) -> Label | None:
        if label is not None and self.instance is not None and label.dataset_id != self.instance.dataset_id:
            raise serializers.ValidationError("That class belongs to another dataset.")
        return label


class ImageViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):  # fmt: skip
    serializer_class = ImageSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_class = ImageFilter
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Image]:
        return Image.objects.select_related("label").order_by("id")

    def update(self, request: Request, *args: object, **kwargs: object) -> Response:
        """A new label goes through the labelling service (history, optimistic lock)."""
        image = self.get_object()
        incoming = self.get_serializer(image, data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        if "label" in data:
            name = data["label"].name if data["label"] else None
            try:
                image_label_set(image=image, label_name=name, user=request.user, source=ChangeSource.API,
                                version=data.get("label_version"))  # fmt: skip
            except LabelConflict as exc:
                return conflict_response(exc)
        if "needs_review" in data:
            image_review_set(image=image, needs_review=data["needs_review"])
        return Response(self.get_serializer(image).data)

    def perform_destroy(self, instance: Image) -> None:
        images_delete(dataset=instance.dataset, ids=[instance.pk])


class LabelSerializer(serializers.ModelSerializer):
    image_count = serializers.IntegerField(source="images.count", read_only=True)

    class Meta:
        model = Label
        fields = ["id", "dataset", "name", "image_count"]
        read_only_fields = ["dataset", "image_count"]


class LabelCreateSerializer(LabelSerializer):
    class Meta(LabelSerializer.Meta):
        read_only_fields = ["image_count"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs["name"] = clean_label_name(attrs["name"])
        if Label.objects.filter(dataset=attrs["dataset"], name=attrs["name"]).exists():
            raise serializers.ValidationError({"name": "This class already exists in the dataset."})
        return attrs


class MergeSerializer(serializers.Serializer):
    into = serializers.PrimaryKeyRelatedField(queryset=Label.objects.all())


class LabelViewSet(viewsets.ModelViewSet):
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["dataset"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Label]:
        return Label.objects.order_by("dataset_id", "name")

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return LabelCreateSerializer if self.action == "create" else LabelSerializer

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = label_create(dataset=data["dataset"], name=data["name"])

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        try:
            label_rename(label=serializer.instance, name=serializer.validated_data.get("name", ""))
        except ValueError as exc:
            raise serializers.ValidationError({"name": str(exc)}) from exc

    def perform_destroy(self, instance: Label) -> None:
        label_delete(label=instance, user=self.request.user)

    @extend_schema(request=MergeSerializer, responses=LabelSerializer)
    @action(detail=True, methods=["post"])
    def merge(self, request: Request, pk: str | None = None) -> Response:
        incoming = MergeSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            target = label_merge(source=self.get_object(), target=incoming.validated_data["into"], user=request.user)
        except ValueError as exc:
            return Response({"detail": str(exc)}, status.HTTP_400_BAD_REQUEST)
        return Response(LabelSerializer(target).data)


class ImportSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()

    class Meta:
        model = DatasetImport
        fields = ["id", "dataset", "original_name", "label", "status", "format", "processed", "total", "progress",
                  "report", "error", "created_at", "started_at", "finished_at"]  # fmt: skip
        read_only_fields = fields

    def get_progress(self, record: DatasetImport) -> dict[str, int | None]:
        live = cache.get(import_progress_key(record.pk)) if not record.is_finished else None
        return {"read": live if live is not None else record.processed, "total": record.total}


class ImportCreateSerializer(serializers.Serializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    archive = serializers.FileField(required=False, help_text="zip, tar(.gz) or the CIFAR-10 python tarball")
    files = serializers.ListField(child=serializers.FileField(), required=False, help_text="loose image files")
    label = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("archive")) == bool(attrs.get("files")):
            raise serializers.ValidationError("Send either `archive` or `files`.")
        return attrs


class ImportThrottle(BaseThrottle):
    """IMPORT_THROTTLE_RATE per user, one budget with the upload page (classifier_site.throttling)."""

    def allow_request(self, request: Request, view: object) -> bool:
        verdict = throttling.import_allowed(request.user.pk)
        self._wait = verdict.wait
        return verdict.allowed

    def wait(self) -> float:
        return max(self._wait, 1.0)


class ImportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ImportSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["dataset", "status"]
    parser_classes = [MultiPartParser, FormParser]
    upload_limit_setting = "IMPORT_MAX_UPLOAD_BYTES"  # classifier_site.uploads.BodyGate: before the body is read

    def get_throttles(self) -> list[BaseThrottle]:
        return [ImportThrottle()] if self.action == "create" else []

    def get_queryset(self) -> QuerySet[DatasetImport]:
        return DatasetImport.objects.all()

    @extend_schema(request=None, responses=ImportSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        try:
            record = import_retry(record=self.get_object())
        except ValueError as exc:
            return Response({"detail": str(exc)}, status.HTTP_409_CONFLICT)
        return Response(ImportSerializer(record).data)

    @extend_schema(request=ImportCreateSerializer, responses={201: ImportSerializer})
    def create(self, request: Request) -> Response:
        limit = settings.IMPORT_MAX_UPLOAD_BYTES
        if too_large(request._request, limit):  # before the body is read
            return payload_too_large(request._request, limit)  # type: ignore[return-value]
        incoming = ImportCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        values = incoming.validated_data
        common = {"dataset": values["dataset"], "user": admin_user(request), "label": values["label"]}  # type: ignore[arg-type]
        try:
            if values.get("archive"):
                record = import_create(upload=values["archive"], **common)
            else:
                record = import_create_from_files(files=values["files"], **common)
        except ValueError as exc:
            return Response({"label": [str(exc)]}, status.HTTP_400_BAD_REQUEST)
        return Response(ImportSerializer(record).data, status.HTTP_201_CREATED)
