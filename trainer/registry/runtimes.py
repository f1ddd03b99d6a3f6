"""A model version's serving runtime: the fastest one whose answers equal Keras' on the
version's own test images. Serving (each dataset's live model) and the evaluation
report (where an evaluated model looked) load versions through here."""

import logging
from pathlib import Path

from django.conf import settings

from trainer.ml.runtimes import Runtime, checked_onnx_runtime, configure_tensorflow_threads, fastest_runtime
from trainer.models import ModelVersion
from trainer.registry.files import local_model_file, local_serving_files, model_version_samples

logger = logging.getLogger(__name__)


def serving_runtime(version: ModelVersion) -> Runtime:
    """The version's fastest runtime with Keras' answers on its own test images: checked
    against the answers stored when ONNX Runtime was chosen for this file before (no
    TensorFlow needed), else chosen now."""
    path = local_model_file(version)
    onnx_path = Path(settings.MODEL_CACHE_DIR) / f"{version.sha256}.onnx"
    warm = (1, settings.PREDICT_MAX_IMAGES)
    auto, threads = settings.PREDICT_RUNTIME == "auto", settings.PREDICT_TF_THREADS
    stored = auto and local_serving_files(version, onnx_path)
    if stored and (checked := checked_onnx_runtime(onnx_path, threads=threads, warm_batches=warm)):
        logger.info("version %s: onnxruntime, checked against Keras' stored answers", version.pk)
        return checked
    configure_tensorflow_threads(threads)
    choice = fastest_runtime(
        path,
        model_version_samples(version, limit=settings.PREDICT_CHECK_IMAGES),
        onnx_path=onnx_path,
        threads=threads,
        try_onnx=auto,
        warm_batches=warm,
    )
    logger.info("version %s runtimes: %s", version.pk, choice.tried)
    return choice.runtime
