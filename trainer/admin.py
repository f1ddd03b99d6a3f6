from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from trainer.models import ModelVersion, TrainingJob
from trainer.registry.services import PromotionRefused, model_version_promote


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "status", "epoch", "progress", "device", "created_at"]
    list_filter = ["status", "dataset"]
    readonly_fields = ["snapshot", "history", "error", "device", "host", "started_at", "heartbeat_at", "finished_at"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "arch", "is_promoted", "rejection_threshold", "created_at"]
    list_filter = ["dataset", "is_promoted"]
    # Versions are immutable: only the rejection threshold may change after training.
    readonly_fields = ["job", "dataset", "file", "sha256", "file_size", "arch", "image_size", "classes",
                       "snapshot_hash", "metrics", "is_promoted", "promoted_at"]  # fmt: skip
    actions = ["promote"]

    @admin.action(description="Promote (serve this version)")
    def promote(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to promote.", messages.ERROR)
            return
        try:
            version = model_version_promote(version=queryset.get(), user=request.user)  # type: ignore[arg-type]
        except PromotionRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"{version.name} is now served.")
