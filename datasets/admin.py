from django.contrib import admin
from django.http import HttpRequest

from datasets.models import Dataset, DatasetImport, Image, Label, LabelChange


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at"]
    search_fields = ["name"]


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    list_display = ["name", "dataset"]
    list_filter = ["dataset"]
    search_fields = ["name"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "label", "split", "width", "height", "original_name"]
    list_filter = ["dataset", "split"]
    search_fields = ["original_name", "sha256"]
    # Labels change only through datasets.labelling (the workbench, the API): history and locking.
    readonly_fields = ["sha256", "width", "height", "file", "label", "label_version", "label_checked",
                       "suggestion", "suggestion_confidence", "suggestion_margin", "suggestion_entropy",
                       "suggestion_version"]  # fmt: skip


@admin.register(DatasetImport)
class DatasetImportAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "original_name", "status", "format", "created_at"]
    list_filter = ["status", "dataset"]
    readonly_fields = ["report", "error", "format", "processed", "total", "started_at", "finished_at"]


@admin.register(LabelChange)
class LabelChangeAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "image", "old_label", "new_label", "source", "user", "undone", "created_at"]
    list_filter = ["dataset", "source"]
    search_fields = ["old_label", "new_label", "user__username"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # history is written by the labelling service only

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # undo reads it: a gap would undo the wrong thing
