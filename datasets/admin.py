from django.contrib import admin

from datasets.models import Dataset, DatasetImport, Image, Label


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
    raw_id_fields = ["label"]
    readonly_fields = ["sha256", "width", "height", "file"]


@admin.register(DatasetImport)
class DatasetImportAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "original_name", "status", "format", "created_at"]
    list_filter = ["status", "dataset"]
    readonly_fields = ["report", "error", "format", "processed", "total", "started_at", "finished_at"]
