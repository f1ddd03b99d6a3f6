"""Admin of serving's tables."""

from django.contrib import admin

from classification.models import ScoringRun


@admin.register(ScoringRun)
class ScoringRunAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "model_version", "status", "processed", "total", "skipped", "created_at"]
    list_filter = ["status", "dataset"]
    readonly_fields = ["dataset", "model_version", "processed", "total", "skipped", "error", "created_by",
                       "started_at", "heartbeat_at", "finished_at"]  # fmt: skip
