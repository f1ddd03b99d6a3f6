"""Dataset API (admins): /api/v1/datasets/."""

from rest_framework import permissions, serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from datasets.models import Dataset
from datasets.selectors import dataset_class_counts, dataset_list


class DatasetSerializer(serializers.ModelSerializer):
    image_count = serializers.IntegerField(read_only=True)
    label_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "image_count", "label_count", "created_at"]


class DatasetViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = DatasetSerializer
    permission_classes = [permissions.IsAdminUser]
    filterset_fields = ["name"]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return dataset_list(user=self.request.user)

    def retrieve(self, request: Request, *args: object, **kwargs: object) -> Response:
        dataset = self.get_object()
        data = dict(self.get_serializer(dataset).data)
        data["classes"] = [
            {"name": c.name, "train": c.train, "val": c.val, "test": c.test}
            for c in dataset_class_counts(dataset=dataset)
        ]
        return Response(data)
