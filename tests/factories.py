"""factory-boy factories for the core records. Files they name are real (a PNG in
storage), so pages and downloads that open them work; nothing here trains a model
(tests.train_once and the `trained_version` fixture do that)."""

import hashlib
from typing import Any

import factory
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from factory.django import DjangoModelFactory

from classification.models import ScoringRun
from classifier_site.runs import RunStatus
from datasets.models import Dataset, DatasetExport, DatasetImport, Image, Label, Split
from tests.images import colour_image
from trainer.models import Evaluation, ExportFormat, ModelExport, ModelVersion, Prediction, TrainingJob

CLASSES = ["blue", "green", "red"]


def stored(name: str, data: bytes) -> str:
    """Save `data` in the site's storage under `name`; the name it got."""
    return default_storage.save(name, ContentFile(data))


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = "!"  # unusable: tests log in with force_login (hashing a real one costs 0.3 s a user)

    class Params:
        admin = factory.Trait(is_staff=True, is_superuser=True)
        staff = factory.Trait(is_staff=True)


class DatasetFactory(DjangoModelFactory):
    class Meta:
        model = Dataset

    name = factory.Sequence(lambda n: f"dataset {n}")


class LabelFactory(DjangoModelFactory):
    class Meta:
        model = Label

    dataset = factory.SubFactory(DatasetFactory)
    name = factory.Iterator(CLASSES)


def _png(image: Any) -> bytes:
    return colour_image(image.label.name if image.label and image.label.name in CLASSES else "red", seed=7)


class ImageFactory(DjangoModelFactory):
    class Meta:
        model = Image

    dataset = factory.SubFactory(DatasetFactory)
    label = factory.SubFactory(LabelFactory, dataset=factory.SelfAttribute("..dataset"))
    split = Split.TEST
    width = height = 16
    sha256 = factory.LazyAttribute(lambda o: hashlib.sha256(f"{o.original_name}".encode()).hexdigest())
    original_name = factory.Sequence(lambda n: f"image-{n}.png")
    file = factory.LazyAttribute(lambda o: stored(f"images/{o.original_name}", _png(o)))
    thumbnail = factory.LazyAttribute(lambda o: o.file)


class DatasetImportFactory(DjangoModelFactory):
    class Meta:
        model = DatasetImport

    dataset = factory.SubFactory(DatasetFactory)
    original_name = "photos.zip"
    status = RunStatus.FAILED
    error = "The archive is not a zip or tar file."


EMPTY_ZIP = b"PK\x05\x06" + b"\x00" * 18  # a zip with no members


class DatasetExportFactory(DjangoModelFactory):
    """A finished export whose stored file is a real (empty) zip."""

    class Meta:
        model = DatasetExport

    dataset = factory.SubFactory(DatasetFactory)
    status = RunStatus.SUCCEEDED
    file = factory.LazyAttribute(lambda o: stored(f"exports/dataset-{o.dataset.pk}/empty.zip", EMPTY_ZIP))
    sha256 = hashlib.sha256(EMPTY_ZIP).hexdigest()
    file_size = len(EMPTY_ZIP)
    report = factory.LazyFunction(lambda: {"images": 0, "unlabelled": 0, "classes": {}, "label_changes": 0})


class TrainingJobFactory(DjangoModelFactory):
    class Meta:
        model = TrainingJob

    dataset = factory.SubFactory(DatasetFactory)
    config = factory.LazyFunction(lambda: {"arch": "baseline", "epochs": 1, "batch_size": 16, "image_size": 32})
    snapshot = factory.LazyFunction(lambda: {"classes": CLASSES, "images": [], "hash": "0" * 64})
    status = RunStatus.SUCCEEDED


class ModelVersionFactory(DjangoModelFactory):
    """A version row whose file is a placeholder: pages and registry actions work, loading it does not."""

    class Meta:
        model = ModelVersion

    job = factory.SubFactory(TrainingJobFactory)
    dataset = factory.SelfAttribute("job.dataset")
    file = factory.LazyFunction(lambda: stored("models/placeholder.keras", b"not a model"))
    sha256 = factory.LazyFunction(lambda: hashlib.sha256(b"not a model").hexdigest())
    arch = "baseline"
    image_size = 32
    classes = factory.LazyFunction(lambda: list(CLASSES))
    metrics = factory.LazyFunction(lambda: {"accuracy": 0.9, "macro_avg": {"f1-score": 0.9}})


class ModelExportFactory(DjangoModelFactory):
    class Meta:
        model = ModelExport

    model_version = factory.SubFactory(ModelVersionFactory)
    format = ExportFormat.KERAS
    status = RunStatus.SUCCEEDED
    file = factory.SelfAttribute("model_version.file")
    sha256 = factory.SelfAttribute("model_version.sha256")


class EvaluationFactory(DjangoModelFactory):
    class Meta:
        model = Evaluation

    model_version = factory.SubFactory(ModelVersionFactory)
    dataset = factory.SelfAttribute("model_version.dataset")
    split = "test"
    classes = factory.LazyFunction(lambda: list(CLASSES))
    metrics = factory.LazyFunction(
        lambda: {"accuracy": 0.9, "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "per_class": {}}
    )
    confusion_png = factory.LazyFunction(lambda: stored("charts/confusion.png", colour_image("red", seed=1)))
    confusion_normalized_png = factory.LazyFunction(lambda: stored("charts/normalized.png", colour_image("red", 2)))
    reliability_png = factory.LazyFunction(lambda: stored("charts/reliability.png", colour_image("red", seed=3)))


class PredictionFactory(DjangoModelFactory):
    class Meta:
        model = Prediction

    evaluation = factory.SubFactory(EvaluationFactory)
    image = factory.SubFactory(ImageFactory, dataset=factory.SelfAttribute("..evaluation.dataset"))
    true_index = 0
    predicted_index = 1
    confidence = 0.6
    probabilities = factory.LazyFunction(lambda: [0.3, 0.6, 0.1])


class ScoringRunFactory(DjangoModelFactory):
    class Meta:
        model = ScoringRun

    dataset = factory.SubFactory(DatasetFactory)
    model_version = factory.SubFactory(ModelVersionFactory, job__dataset=factory.SelfAttribute("...dataset"))
    status = RunStatus.SUCCEEDED
    processed = total = 1
