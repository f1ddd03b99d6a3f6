"""Training jobs and the model versions they produce."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from datasets.models import Dataset


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class TrainingJob(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="jobs")
    config = models.JSONField()  # trainer.ml.config.TrainConfig.to_dict()
    # Frozen at creation: {"classes": [...], "images": [[id, class index, split], ...], "hash": "..."}
    snapshot = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    progress = models.FloatField(default=0.0)  # 0..1 over all epochs
    epoch = models.PositiveIntegerField(default=0)  # epochs completed
    step = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0)
    images_per_second = models.FloatField(null=True, blank=True)
    history = models.JSONField(default=list)  # one dict of Keras logs per finished epoch
    error = models.TextField(blank=True)
    device = models.CharField(max_length=200, blank=True)
    host = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs", 0))


class ModelVersion(models.Model):
    job = models.OneToOneField(TrainingJob, on_delete=models.PROTECT, related_name="model_version")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="model_versions")
    # Written to a temporary name, then renamed: a row exists only for a complete file.
    file = models.FileField(max_length=300)
    sha256 = models.CharField(max_length=64)
    arch = models.CharField(max_length=50)
    image_size = models.PositiveIntegerField()
    classes = models.JSONField()
    metrics = models.JSONField(default=dict)
    is_promoted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # The database itself guarantees at most one promoted version.
            models.UniqueConstraint(fields=["is_promoted"], condition=Q(is_promoted=True), name="one_promoted_model")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"v{self.pk} · {self.arch} · {self.dataset.name}"

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return float(value) if value is not None else None
