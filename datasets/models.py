"""Datasets, their classes (labels) and their images."""

from django.conf import settings
from django.db import models


class Dataset(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    # How imported images without a predefined split are divided, per class.
    val_fraction = models.FloatField(default=0.1)
    test_fraction = models.FloatField(default=0.1)
    split_seed = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Label(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="labels")
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["dataset", "name"], name="label_unique_per_dataset")]

    def __str__(self) -> str:
        return self.name


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VALIDATION = "val", "Validation"
    TEST = "test", "Test"


class Image(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="images")
    # Stored under a content-hash name; the client's file name is kept only for display.
    file = models.FileField(max_length=300)
    # Small images are their own thumbnail; larger ones get a 128 px copy at import.
    thumbnail = models.FileField(max_length=300, blank=True)
    original_name = models.CharField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    label = models.ForeignKey(Label, null=True, blank=True, on_delete=models.SET_NULL, related_name="images")
    split = models.CharField(max_length=5, choices=Split.choices, default=Split.TRAIN)
    # In the labelling queue: someone (an evaluation report, a reviewer) asked for a second look.
    # db_default: the importer writes rows with a raw multi-row INSERT that names only its columns.
    needs_review = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["dataset", "sha256"], name="image_unique_content_per_dataset")]
        indexes = [models.Index(fields=["dataset", "split"]), models.Index(fields=["dataset", "label"])]

    def __str__(self) -> str:
        return self.original_name or self.sha256[:12]


class ImportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class DatasetImport(models.Model):
    """One upload being imported: its source file, progress and report."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="imports")
    source = models.FileField(max_length=300, blank=True)  # deleted once imported
    original_name = models.CharField(max_length=300)
    # Class for every image of an upload of loose files; empty means folders or manifest decide.
    label = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=ImportStatus.choices, default=ImportStatus.QUEUED)
    format = models.CharField(max_length=40, blank=True)
    processed = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(null=True, blank=True)  # unknown while streaming a tar
    report = models.JSONField(default=dict)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Import {self.pk} of {self.original_name} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (ImportStatus.SUCCEEDED, ImportStatus.FAILED)

    @property
    def progress(self) -> float | None:
        if self.status == ImportStatus.SUCCEEDED:
            return 1.0
        return self.processed / self.total if self.total else None
