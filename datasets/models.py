"""Datasets, their classes (labels) and their images."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q

from classifier_site.runs import Counted, RunStatus, is_stale


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
    # Optimistic locking: every label change adds one, and a change based on an older
    # version is refused (HTTP 409) instead of overwriting a colleague's work.
    label_version = models.PositiveIntegerField(default=0, db_default=0)
    # A person set or confirmed this label (workbench, API, review queue, correction);
    # imported labels are unchecked, which is what the review queue looks at.
    label_checked = models.BooleanField(default=False, db_default=False)
    # The promoted model's opinion, written by a scoring run (classification.scoring). The
    # suggestion is a class *name*: accepting it may create the class in this dataset.
    suggestion = models.CharField(max_length=200, blank=True, default="", db_default="")
    suggestion_confidence = models.FloatField(null=True, blank=True)  # top-1 probability
    suggestion_margin = models.FloatField(null=True, blank=True)  # top-1 minus top-2
    suggestion_entropy = models.FloatField(null=True, blank=True)  # of the whole distribution, in nats
    # Which model version (trainer.ModelVersion's id) suggested it: data, not a foreign key,
    # so datasets depends on no other app (its rows outlive a deleted version anyway).
    suggestion_version = models.PositiveIntegerField(null=True, blank=True)
    # What a data-quality run (trainer.quality) found, as data like the suggestion: confident
    # learning's label quality (0 surely wrong .. 1) where it flags the label, with the class
    # it prefers; and, on the images it finds most unusual, how like their nearest class they
    # are (-1 .. 1: the mean similarity of their nearest images there).
    label_issue_quality = models.FloatField(null=True, blank=True)
    label_issue_suggestion = models.CharField(max_length=200, blank=True, default="", db_default="")
    outlier_score = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["dataset", "sha256"], name="image_unique_content_per_dataset")]
        indexes = [
            models.Index(fields=["dataset", "split"]),
            # Covers the per-class, per-split counts every dataset page shows (no table reads).
            models.Index(fields=["dataset", "label", "split"], name="image_dataset_label_split"),
            models.Index(fields=["dataset", "suggestion_confidence"]),
        ]

    def __str__(self) -> str:
        return self.original_name or self.sha256[:12]


class ChangeSource(models.TextChoices):
    WORKBENCH = "workbench", "Workbench"
    API = "api", "API"
    SUGGESTION = "suggestion", "Accepted suggestion"
    REVIEW = "review", "Review queue"
    REPORT = "report", "Evaluation report"
    CORRECTION = "correction", "Prediction correction"
    CLASS = "class", "Class merged or deleted"
    UNDO = "undo", "Undo"


class LabelChange(models.Model):
    """One image's label going from one class to another: who, when, from where.

    Changes made together (a bulk assign, an accept-suggestions) share a `batch`, and
    undo reverts a whole batch. Names are copied so history survives a class's deletion;
    undo restores the class by id (so a renamed class stays one class) and the image's
    review flags as they were.
    """

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="label_changes")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="label_changes")
    batch = models.UUIDField(db_index=True)
    old_label = models.CharField(max_length=200, blank=True)  # "" is unlabelled
    new_label = models.CharField(max_length=200, blank=True)
    # The class undo goes back to; NULL once deleted (then undo leaves the image as it is).
    old_class = models.ForeignKey(Label, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    old_needs_review = models.BooleanField(default=False)
    old_label_checked = models.BooleanField(default=False)
    version = models.PositiveIntegerField()  # the image's label_version after this change
    source = models.CharField(max_length=12, choices=ChangeSource.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # No longer in effect: undone, or overwritten by someone else before its author undid it.
    undone = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["dataset", "user", "-id"]), models.Index(fields=["image", "-id"])]

    def __str__(self) -> str:
        return f"{self.image_id}: {self.old_label or '—'} → {self.new_label or '—'}"


class DatasetImport(Counted, models.Model):
    """One upload being imported: its source file, progress and report."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="imports")
    source = models.FileField(max_length=300, blank=True)  # deleted once imported
    original_name = models.CharField(max_length=300)
    # Class for every image of an upload of loose files; empty means folders or manifest decide.
    label = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    format = models.CharField(max_length=40, blank=True)
    processed = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(null=True, blank=True)  # unknown while streaming a tar
    report = models.JSONField(default=dict)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Stamped with each batch of rows the worker commits: the reaper, which reads only the
    # database, takes an import silent for IMPORT_STALE_SECONDS as one whose worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)  # claims so far; the reaper stops at IMPORT_MAX_ATTEMPTS
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Import {self.pk} of {self.original_name} ({self.status})"


class StagedImage(models.Model):
    """An image an import has stored but not yet published: the import commits these in
    small batches (so it never holds SQLite's write lock for long) and copies them into
    `Image` in one short transaction at its end, so users still see all or nothing.

    A row is committed before its files are written, so it is also the list of files to
    remove when the import dies (`imports_reap`). The label is a name: classes are made
    only when the import commits.
    """

    run = models.ForeignKey(DatasetImport, null=True, on_delete=models.CASCADE, related_name="+")
    attempt = models.PositiveIntegerField(default=0)  # a retry's rows are not a dead attempt's
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    file = models.CharField(max_length=300)
    thumbnail = models.CharField(max_length=300, blank=True)
    original_name = models.CharField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    label_name = models.CharField(max_length=200, blank=True)  # "" is unlabelled
    split = models.CharField(max_length=5, choices=Split.choices, default=Split.TRAIN)
    created_at = models.DateTimeField()

    class Meta:
        # Only imports under way have rows here: the table stays small, lookups by file name too.
        indexes = [models.Index(fields=["run", "attempt"])]

    def __str__(self) -> str:
        return f"{self.original_name or self.sha256[:12]} (staged by import {self.run_id})"


# Copying a file into the zip takes milliseconds; an export silent for this long lost its worker.
EXPORT_STALE = timedelta(minutes=10)


class DatasetExport(Counted, models.Model):
    """A dataset written out as a zip (datasets.exports): class folders per split, a CSV
    manifest, the label history. Built by a worker, kept in storage for download."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="exports")
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    file = models.FileField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)  # of the zip
    file_size = models.PositiveBigIntegerField(default=0)
    processed = models.PositiveIntegerField(default=0)  # images written
    total = models.PositiveIntegerField(null=True, blank=True)  # known once a worker starts
    report = models.JSONField(default=dict)  # images per class and split, unlabelled, label changes
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)  # stamped as images are written
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # Two exports of one dataset at once would write the same zip twice.
            models.UniqueConstraint(
                fields=["dataset"],
                condition=Q(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]),
                name="one_active_export_per_dataset",
            )
        ]

    def __str__(self) -> str:
        return f"Export {self.pk} of dataset {self.dataset_id} ({self.status})"

    @property
    def is_stale(self) -> bool:
        """Running, but nothing written for longer than any file takes: its worker died."""
        return is_stale(status=self.status, last_sign_of_life=self.heartbeat_at or self.started_at, after=EXPORT_STALE)
