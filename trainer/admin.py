from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from trainer.models import ModelVersion, TrainingJob
from trainer.services import model_version_promote


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "status", "epoch", "progress", "device", "created_at"]
    list_filter = ["status", "dataset"]
    readonly_fields = ["snapshot", "history", "error", "device", "host", "started_at", "heartbeat_at", "finished_at"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "arch", "is_promoted", "created_at"]
    list_filter = ["dataset", "is_promoted"]
    readonly_fields = ["job", "file", "sha256", "classes", "metrics", "is_promoted"]
    actions = ["promote"]

    @admin.action(description="Promote (serve this version)")
    def promote(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to promote.", messages.ERROR)
            return
        version = model_version_promote(version=queryset.get())
        self.message_user(request, f"{version.name} is now served.")
