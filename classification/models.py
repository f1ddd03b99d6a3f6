"""Serving's own tables: scoring runs (the promoted model's suggestions for a dataset), and
learning from production (a dataset's opt-in and the live answers it kept)."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q

from classifier_site.runs import Counted, RunStatus, is_stale
from datasets.models import Dataset
from trainer.models import ModelVersion

# A batch of images takes seconds; a run whose row has not moved for this long lost its worker.
SCORING_STALE = timedelta(minutes=10)


class ScoringRun(Counted, models.Model):
    """The promoted model scoring every image of a dataset: the suggestion, its
    confidence, margin and entropy on each Image row (classification.scoring.services)."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="scoring_runs")
    # The version promoted when the run was asked for; a promotion meanwhile does not change it.
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="scoring_runs")
    # Queued, running, succeeded, failed: the same life as an export's.
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    processed = models.PositiveIntegerField(default=0)  # images done, skipped ones included
    total = models.PositiveIntegerField(null=True, blank=True)  # known once a worker starts
    skipped = models.PositiveIntegerField(default=0)  # files missing or unreadable
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)  # stamped with every batch
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "trainer_scoringrun"  # created by trainer's migrations, before scoring moved to serving
        ordering = ["-created_at", "-id"]
        constraints = [
            # Two runs of one dataset at once would only race each other's writes.
            models.UniqueConstraint(
                fields=["dataset"],
                condition=Q(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]),
                name="one_active_scoring_run_per_dataset",
            )
        ]

    def __str__(self) -> str:
        return f"Scoring run {self.pk} of dataset {self.dataset_id} ({self.status})"

    @property
    def is_stale(self) -> bool:
        """Running, but no batch for longer than any takes: its worker died. Another run may start."""
        return is_stale(status=self.status, last_sign_of_life=self.heartbeat_at or self.started_at, after=SCORING_STALE)


class LiveCapture(models.Model):
    """Learning from production, opted into per dataset (classification.capture): a sample of
    the live predictions of its model is kept, with the image, for the labelling queue."""

    dataset = models.OneToOneField(Dataset, on_delete=models.CASCADE, related_name="live_capture")
    enabled = models.BooleanField(default=False)
    # Of the answers at or above the rejection threshold; every one below it is kept.
    share = models.FloatField(default=0.05)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"live capture of dataset {self.dataset_id} ({'on' if self.enabled else 'off'})"


class LivePrediction(models.Model):
    """One sampled live answer: what the model said, how sure it was, which version; and the
    image it was given while that is kept (unlabelled in the dataset, or labelled since)."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="live_predictions")
    model_version = models.ForeignKey(ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+")
    image = models.ForeignKey("datasets.Image", null=True, on_delete=models.SET_NULL, related_name="+")
    label = models.CharField(max_length=200)  # the most probable class, even when the answer was "unknown"
    confidence = models.FloatField()
    unknown = models.BooleanField()
    # The answers it stands for: 1 below the threshold (all kept), 1/share above (a sample):
    # weighted, the sample gives the live mix and confidence without bias.
    weight = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["dataset", "created_at"])]

    def __str__(self) -> str:
        return f"live prediction {self.pk}: {self.label} ({self.confidence:.2f})"
