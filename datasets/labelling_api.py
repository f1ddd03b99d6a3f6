"""Label changes over the API: bulk set, undo, accept suggestions, history.

The workbench page calls these same endpoints, so the page and API clients share one
set of rules (datasets.labelling): a stale `version` gets 409 and changes nothing.
"""

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from datasets.labelling import (
    Conflict,
    LabelConflict,
    LabelEdit,
    LabelSetResult,
    images_label_set,
    label_change_undo,
    suggestions_accept,
)
from datasets.models import ChangeSource, Dataset, LabelChange, Split
from datasets.selectors import WORKBENCH_SHOWS, dataset_get, is_id, workbench_images

# The most images one request may change: a page of the workbench is 60, a bulk
# script can send this many per call (accept-suggestions has no such limit).
MAX_CHANGES = 5000


MAX_ID = 2**63 - 1  # the largest id a database column holds


class LabelChangeInSerializer(serializers.Serializer):
    image = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    label = serializers.CharField(allow_null=True, allow_blank=True, max_length=200,
                                  help_text="A class name (a new name creates the class); null unlabels.")  # fmt: skip
    version = serializers.IntegerField(
        min_value=0, required=False, allow_null=True,
        help_text="The image's label_version you based this on; a newer one gets 409. Omit only to force.",
    )  # fmt: skip


class LabelRequestSerializer(serializers.Serializer):
    changes = LabelChangeInSerializer(many=True, allow_empty=False, max_length=MAX_CHANGES)
    source = serializers.ChoiceField(
        choices=[ChangeSource.API, ChangeSource.WORKBENCH, ChangeSource.REVIEW], default=ChangeSource.API
    )


class ImageLabelSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    label = serializers.CharField(allow_null=True)
    version = serializers.IntegerField()


class LabelResultSerializer(serializers.Serializer):
    batch = serializers.UUIDField(allow_null=True, help_text="Groups the change; undo reverts a whole batch.")
    images = ImageLabelSerializer(many=True)


class ConflictSerializer(serializers.Serializer):
    deleted = serializers.BooleanField(help_text="The image was deleted meanwhile.")
    image = serializers.IntegerField()
    label = serializers.CharField(allow_null=True, help_text="The image's class now.")
    version = serializers.IntegerField(help_text="Its label_version now: retry with this one.")
    changed_by = serializers.CharField(allow_null=True)
    changed_at = serializers.DateTimeField(allow_null=True)


class UndoResultSerializer(LabelResultSerializer):
    kept = ConflictSerializer(many=True, help_text="Images of the batch someone else changed since: left as they are.")


class ConflictResponseSerializer(serializers.Serializer):
    detail = serializers.CharField()
    conflicts = ConflictSerializer(many=True)


class AcceptRequestSerializer(serializers.Serializer):
    min_confidence = serializers.FloatField(min_value=0, max_value=1, help_text="0..1, e.g. 0.9 for 90%.")
    show = serializers.ChoiceField(choices=[v for v, _ in WORKBENCH_SHOWS], default="all")
    # Strict, unlike the page's lenient filters: a mistyped filter must not widen a bulk write.
    label_id = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1, max_value=MAX_ID,
                                        help_text="Only images of this class (its id, not its name).")  # fmt: skip
    split = serializers.ChoiceField(choices=["", *Split.values], required=False, default="")

    def to_internal_value(self, data: Any) -> Any:
        """An unknown key is an error: `{"label": "cat"}` silently ignored would accept everywhere."""
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        if unknown:
            raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class AcceptResultSerializer(serializers.Serializer):
    batch = serializers.UUIDField(allow_null=True)
    accepted = serializers.IntegerField()


_CONFLICT = OpenApiResponse(
    ConflictResponseSerializer,
    "Someone changed an image after you read it; nothing was applied.",
    [OpenApiExample("conflict", {
        "detail": "Not saved: image 12 was changed to dog by alice at 10:02:11. Nothing in this change was applied.",
        "conflicts": [{"image": 12, "label": "dog", "version": 4, "changed_by": "alice",
                       "changed_at": "2026-11-29T10:02:11Z"}],
    })],
)  # fmt: skip


def _result(result: LabelSetResult, **extra: object) -> Response:
    images = [{"id": i.id, "label": i.label, "version": i.version} for i in result.images]
    return Response({"batch": result.batch, "images": images, **extra})


def _conflict_json(conflicts: list[Conflict]) -> list[dict[str, object]]:
    return [{"image": c.image_id, "label": c.label, "version": c.version, "changed_by": c.changed_by,
             "changed_at": c.changed_at, "deleted": c.deleted} for c in conflicts]  # fmt: skip


def conflict_response(exc: LabelConflict) -> Response:
    return Response({"detail": str(exc), "conflicts": _conflict_json(exc.conflicts)}, status.HTTP_409_CONFLICT)


def _bad(exc: ValueError) -> Response:
    return Response({"detail": str(exc)}, status.HTTP_400_BAD_REQUEST)


class LabellingActions:
    """Actions on /api/v1/datasets/{id}/ (mixed into DatasetViewSet)."""

    def dataset(self, request: Request, pk: str | None) -> Dataset:
        """The dataset without the list's image and class counts: a key press must not
        count 60,000 images (get_object would, through the viewset's queryset)."""
        if pk is None or not is_id(pk):
            raise Http404("No such dataset.")
        return dataset_get(user=request.user, pk=int(pk))

    @extend_schema(
        summary="Set the labels of many images at once",
        request=LabelRequestSerializer,
        responses={200: LabelResultSerializer, 409: _CONFLICT, 400: OpenApiResponse(description="Bad request")},
    )
    @action(detail=True, methods=["post"])
    def label(self, request: Request, pk: str | None = None) -> Response:
        incoming = LabelRequestSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        edits = [LabelEdit(c["image"], c["label"], c.get("version")) for c in incoming.validated_data["changes"]]
        try:
            result = images_label_set(
                dataset=self.dataset(request, pk),
                edits=edits,
                user=request.user,
                source=incoming.validated_data["source"],
            )
        except LabelConflict as exc:
            return conflict_response(exc)
        except ValueError as exc:
            return _bad(exc)
        return _result(result)

    @extend_schema(
        summary="Undo your last label change in this dataset",
        request=None,
        responses={
            200: UndoResultSerializer,
            409: OpenApiResponse(
                ConflictResponseSerializer,
                "Each of the batch's images was changed since by someone "
                "else: nothing undone; the next undo goes further back.",
            ),
            400: OpenApiResponse(description="Nothing to undo"),
        },
    )
    @action(detail=True, methods=["post"])
    def undo(self, request: Request, pk: str | None = None) -> Response:
        try:
            result = label_change_undo(dataset=self.dataset(request, pk), user=request.user)
        except LabelConflict as exc:
            return conflict_response(exc)
        except ValueError as exc:
            return _bad(exc)
        return _result(result, kept=_conflict_json(result.kept))

    @extend_schema(
        summary="Accept the model's suggestions above a confidence",
        request=AcceptRequestSerializer,
        responses={200: AcceptResultSerializer, 409: _CONFLICT},
    )
    @action(detail=True, methods=["post"], url_path="accept-suggestions")
    def accept_suggestions(self, request: Request, pk: str | None = None) -> Response:
        incoming = AcceptRequestSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        dataset = self.dataset(request, pk)
        if data["label_id"] is not None and not dataset.labels.filter(pk=data["label_id"]).exists():
            message = f"No class with id {data['label_id']} in {dataset.name}."
            return Response({"label_id": [message]}, status.HTTP_400_BAD_REQUEST)
        label = "" if data["label_id"] is None else str(data["label_id"])
        images = workbench_images(dataset=dataset, show=data["show"], label=label, split=data["split"])
        try:
            result = suggestions_accept(
                dataset=dataset, images=images, min_confidence=data["min_confidence"], user=request.user
            )
        except LabelConflict as exc:
            return conflict_response(exc)
        except ValueError as exc:
            return _bad(exc)
        return Response({"batch": result.batch, "accepted": result.count})


class LabelChangeSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.get_username", read_only=True, default=None)

    class Meta:
        model = LabelChange
        fields = ["id", "dataset", "image", "batch", "old_label", "new_label", "version", "source", "user", "undone",
                  "created_at"]  # fmt: skip


class LabelChangeViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Label history, newest first: who set which label when (filter by dataset, image, user, batch)."""

    serializer_class = LabelChangeSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["dataset", "image", "user", "batch", "source"]

    def get_queryset(self) -> QuerySet[LabelChange]:
        return LabelChange.objects.select_related("user").order_by("-id")
