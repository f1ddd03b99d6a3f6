"""Training jobs and the model versions they produce."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q

from classifier_site.runs import FINISHED, Counted, RunStatus, is_stale
from datasets.models import Dataset
from trainer.ml.config import is_pretrained_arch


class TrainingJob(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="jobs")
    config = models.JSONField()  # trainer.ml.config.TrainConfig.to_dict()
    # Frozen at creation: {"classes": [...], "images": [[id, class index, split], ...], "hash": "..."}
    snapshot = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    progress = models.FloatField(default=0.0)  # 0..1 over all epochs
    epoch = models.PositiveIntegerField(default=0)  # epochs completed
    step = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0)
    images_per_second = models.FloatField(null=True, blank=True)
    history = models.JSONField(default=list)  # one dict of Keras logs per finished epoch
    # Each claim by a worker is one attempt; the reaper re-queues a job whose worker
    # died until TRAIN_MAX_ATTEMPTS. Writes from a run carry its attempt number, so a
    # worker presumed dead that wakes up again cannot touch the job.
    attempts = models.PositiveIntegerField(default=0)
    events = models.JSONField(default=list)  # [{"at": ISO time, "message": "..."}], oldest first
    environment = models.JSONField(default=dict)  # package versions of the run: python, tensorflow, ...
    snapshot_hash = models.CharField(max_length=64, blank=True)
    # What `auto` chose and why, in one sentence ("" for a job that named its architecture).
    recipe = models.TextField(blank=True)
    # What a running job is doing: decoding, features, head, fine-tuning, evaluating ("" for epochs of a
    # from-scratch run). For decoding and features, step/steps count images.
    phase = models.CharField(max_length=20, blank=True)
    error = models.TextField(blank=True)
    device = models.CharField(max_length=200, blank=True)
    host = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # The client's idempotency key (the train form's hidden field, the API's Idempotency-Key
    # header): a second request with the same key from the same user gets this job back.
    request_key = models.CharField(max_length=64, blank=True, default="")
    # When its queue message was last sent: a job queued far longer than that lost it
    # (a purged queue, a broker restored from an old state) and the reaper sends it again.
    published_at = models.DateTimeField(null=True, blank=True)
    # The Celery worker (its node name, e.g. gpu0@host) running the current attempt: a worker
    # told to shut down (SIGTERM) asks exactly its own jobs to hand themselves back.
    worker = models.CharField(max_length=200, blank=True)
    # Set by a worker that is shutting down: the job checkpoints and goes back to the queue.
    handback_requested = models.BooleanField(default=False)
    # The last time the run moved (a batch, an image decoded, a phase begun). The heartbeat
    # says the process lives; this says it still gets somewhere.
    progress_at = models.DateTimeField(null=True, blank=True)
    # The running job's last checkpoint in media storage (a tar of its checkpoint folder) and
    # its SHA-256: a re-queued job resumes from it on any worker, whose own copy is a cache.
    checkpoint_file = models.CharField(max_length=300, blank=True, default="")
    checkpoint_sha256 = models.CharField(max_length=64, blank=True, default="")
    # A trial of a sweep (trainer.sweeps); null for a job started on its own.
    sweep = models.ForeignKey("Sweep", null=True, blank=True, on_delete=models.SET_NULL, related_name="trials")
    # The epoch at which its sweep's successive halving stopped it (it ends cancelled, saying why).
    stopped_at_rung = models.PositiveIntegerField(null=True, blank=True)
    replayed = False  # not a column: training_job_start sets it on a job it found by its key
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["status", "heartbeat_at"])]
        constraints = [
            # One job per key and user, however many requests race: the double-click guard.
            models.UniqueConstraint(
                fields=["created_by", "request_key"], condition=~Q(request_key=""), name="one_job_per_request_key"
            )
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def epochs(self) -> int:
        """All epochs of the run: for pretrained backbones, head plus fine-tuning."""
        # From the stored values, not TrainConfig: a backbone file installed on a worker host
        # only is not an architecture this web process knows, and its jobs must still render.
        fine_tune = int(self.config.get("fine_tune_epochs") or 0) if self.is_transfer else 0
        return int(self.config.get("epochs") or 0) + fine_tune

    @property
    def is_transfer(self) -> bool:
        return is_pretrained_arch(str(self.config.get("arch", "")))

    @property
    def phase_text(self) -> str:
        """What the job is doing, in words, for the job page and `train --wait`."""
        texts = {
            "decoding": f"decoding {self.steps:,} images at the training size",
            "features": f"computing features: {self.step:,} of {self.steps:,} images",
            "head": f"training the head on the cached features: epoch {self.epoch}",
            "fine-tuning": f"fine-tuning the backbone's top layers: epoch {self.epoch}",
            "evaluating": "evaluating on the test split",
        }
        return texts.get(self.phase, f"epoch {self.epoch} of {self.epochs}")

    @property
    def transfer_outcome(self) -> dict[str, object] | None:
        """Which of the frozen head and the fine-tuned model was kept, with their validation accuracy."""
        version = getattr(self, "model_version", None)
        return (version.metrics.get("transfer") if version else None) or None

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the current speed, while running."""
        if self.status != RunStatus.RUNNING or not self.images_per_second or not self.steps or self.phase:
            return None
        remaining_steps = (self.epochs - self.epoch) * self.steps - self.step
        batch = int(self.config.get("batch_size", 1))
        return max(remaining_steps, 0) * batch / self.images_per_second


class SweepMethod(models.TextChoices):
    GRID = "grid", "Grid: every combination"
    RANDOM = "random", "Random samples"


class Sweep(models.Model):
    """A set of training configs run as ordinary jobs (its trials) on one frozen snapshot,
    fanned out over the `gpu` workers; trials behind at a rung stop early (successive
    halving, trainer.ml.sweep). It ends when every trial has, naming the best."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="sweeps")
    # The config fields every trial shares (the architecture's defaults fill the rest) and the
    # fields that vary: {"learning_rate": [0.1, 0.4], "weight_decay": {"low": 1e-4, "high": 1e-2, "log": true}}.
    base_config = models.JSONField(default=dict)
    space = models.JSONField()
    method = models.CharField(max_length=10, choices=SweepMethod.choices, default=SweepMethod.GRID)
    budget = models.PositiveIntegerField()  # the most trials
    seed = models.PositiveIntegerField(default=0)
    early_stopping = models.BooleanField(default=True)
    eta = models.PositiveSmallIntegerField(default=3)  # a rung keeps its top 1/eta
    first_rung = models.PositiveIntegerField(default=1)  # rungs at first_rung * eta^k epochs
    promote_best = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.RUNNING)
    best_job = models.ForeignKey(TrainingJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    best_score = models.FloatField(null=True, blank=True)
    # How it ended: which trial won and whether it was promoted (or why not).
    outcome = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"Sweep {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED


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
    snapshot_hash = models.CharField(max_length=64, blank=True)  # of the job's frozen dataset snapshot
    backbone_sha256 = models.CharField(max_length=64, blank=True)  # the pretrained backbone file it was built on
    file_size = models.PositiveBigIntegerField(default=0)
    # The model converted for ONNX Runtime by the training worker, and its check record
    # (trainer.ml.runtimes): web processes serve it without TensorFlow. Blank: none.
    onnx_file = models.CharField(max_length=300, blank=True)
    onnx_check_file = models.CharField(max_length=300, blank=True)
    # Below this top probability the predictor answers "unknown". Chosen on the
    # validation split when training ends (metrics["rejection"]); admins may change it.
    rejection_threshold = models.FloatField(default=0.0)
    is_promoted = models.BooleanField(default=False)
    promoted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # The database itself guarantees at most one promoted version per dataset.
            models.UniqueConstraint(
                fields=["dataset"], condition=Q(is_promoted=True), name="one_promoted_model_per_dataset"
            )
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

    @property
    def macro_f1(self) -> float | None:
        value = (self.metrics.get("macro_avg") or {}).get("f1-score")
        return float(value) if value is not None else None


class Promotion(models.Model):
    """One change of the served version: the registry's history, and what a
    rollback follows back."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="promotions")
    # What served before; null for the site's first model.
    previous = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    forced = models.BooleanField(default=False)  # past the macro-F1 gate
    rollback = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{'rollback to' if self.rollback else 'promotion of'} v{self.model_version_id}"


class ServingDefault(models.Model):
    """The dataset whose live model answers predictions that name no dataset (one
    row at most, id 1). Without a row, or when that dataset has no live model, the
    most recently promoted version answers."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="one_serving_default")]

    def __str__(self) -> str:
        return f"default: {self.dataset}"


class ExportFormat(models.TextChoices):
    KERAS = "keras", "Keras (.keras)"
    SAVEDMODEL = "savedmodel", "TensorFlow SavedModel (.zip)"
    TFLITE = "tflite", "TensorFlow Lite / LiteRT (.tflite)"
    ONNX = "onnx", "ONNX (.onnx)"


# Conversions take seconds to a minute; one running this long lost its worker.
EXPORT_STALE = timedelta(minutes=15)


class ModelExport(models.Model):
    """A model version converted for another runtime, made once by a worker and kept."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=12, choices=ExportFormat.choices)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    file = models.FileField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    file_size = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model_version", "format"]
        constraints = [models.UniqueConstraint(fields=["model_version", "format"], name="one_export_per_format")]

    def __str__(self) -> str:
        return f"{self.format} export of {self.model_version}"

    @property
    def is_stale(self) -> bool:
        """Running for longer than any conversion takes: its worker died. It may be asked for again."""
        return is_stale(status=self.status, last_sign_of_life=self.started_at, after=EXPORT_STALE)


class Evaluation(models.Model):
    """One evaluation report of a model version on a dataset's test split: the one
    written when its job finishes, and one per later `evaluate` run."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="evaluations")
    split = models.CharField(max_length=5)  # "test", or "val" when the dataset had no test images
    # trainer.ml.metrics.report: accuracy, top-k, per class, averages, log loss, calibration, matrix.
    metrics = models.JSONField(default=dict)
    # The model's classes, in the order of the prediction indices below.
    classes = models.JSONField(default=list)
    confusion_png = models.FileField(max_length=300, blank=True)
    confusion_normalized_png = models.FileField(max_length=300, blank=True)
    reliability_png = models.FileField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.model_version}"

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return float(value) if value is not None else None


class Prediction(models.Model):
    """What the model answered for one evaluated image: the rows behind each
    confusion-matrix cell, the mistakes gallery and the CSV download."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="predictions")
    # Kept when the image is deleted later: the report's counts must still add up.
    image = models.ForeignKey("datasets.Image", null=True, on_delete=models.SET_NULL, related_name="predictions")
    true_index = models.PositiveSmallIntegerField()
    predicted_index = models.PositiveSmallIntegerField()
    confidence = models.FloatField()  # the probability of the predicted class
    probabilities = models.JSONField()  # one per class, in Evaluation.classes order

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["evaluation", "true_index", "predicted_index"]),
            models.Index(fields=["evaluation", "-confidence"]),
        ]

    def __str__(self) -> str:
        return f"image {self.image_id}: {self.true_name} predicted as {self.predicted_name}"

    @property
    def is_correct(self) -> bool:
        return self.true_index == self.predicted_index

    @property
    def true_probability(self) -> float:
        """What the model gave the right answer."""
        return float(self.probabilities[self.true_index])

    @property
    def true_name(self) -> str:
        return str(self.evaluation.classes[self.true_index])

    @property
    def predicted_name(self) -> str:
        return str(self.evaluation.classes[self.predicted_index])


class ReaperPass(models.Model):
    """When the reaper (`manage.py reaper`) last finished a pass: one row, updated in place.
    /readyz fails when it is older than REAPER_STALE_SECONDS (the reaper stopped)."""

    host = models.CharField(max_length=200, blank=True)
    finished_at = models.DateTimeField()
    summary = models.JSONField(default=dict)  # what the pass did: {"requeued": [ids], ...}

    def __str__(self) -> str:
        return f"Reaper pass at {self.finished_at:%Y-%m-%d %H:%M:%S}"


# A feature pass checkpoints its progress with every batch; silence this long lost its worker.
QUALITY_STALE = timedelta(minutes=10)


class QualityRun(Counted, models.Model):
    """A dataset's data-quality analysis (trainer.quality): every image's feature vector
    from one backbone, stored with a vector index for "more like this", and what the
    vectors say (near-duplicate groups, label issues, outliers, small classes) in `report`."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="quality_runs")
    backbone = models.CharField(max_length=100)
    image_size = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    processed = models.PositiveIntegerField(default=0)  # images through the backbone or from a cache
    total = models.PositiveIntegerField(null=True, blank=True)  # known once a worker starts
    skipped = models.PositiveIntegerField(default=0)  # files missing or unreadable
    reused = models.PositiveIntegerField(default=0)  # vectors read from a training job's feature cache
    # The stored vectors and their index (one file: trainer.ml.data_quality.VectorIndex) and its SHA-256.
    index_file = models.CharField(max_length=300, blank=True)
    index_sha256 = models.CharField(max_length=64, blank=True)
    # The backbone as ONNX (trainer.ml.extractor), for "more like this" from an uploaded image;
    # empty when it would not convert.
    extractor_file = models.CharField(max_length=300, blank=True)
    extractor_sha256 = models.CharField(max_length=64, blank=True)
    report = models.JSONField(default=dict)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dataset"],
                condition=Q(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]),
                name="one_active_quality_run_per_dataset",
            )
        ]

    def __str__(self) -> str:
        return f"Quality run {self.pk} of dataset {self.dataset_id} ({self.status})"

    @property
    def is_stale(self) -> bool:
        return is_stale(status=self.status, last_sign_of_life=self.heartbeat_at or self.started_at, after=QUALITY_STALE)
