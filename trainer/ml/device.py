"""Which device a worker trains on. One worker per GPU: CUDA_VISIBLE_DEVICES picks it."""

import logging

logger = logging.getLogger(__name__)


def configure_devices() -> str:
    """Enable GPU memory growth and return the device name ("CPU" without a GPU)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Allocate as needed instead of grabbing all memory at start-up.
        tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus:
        name = "CPU"
    else:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = str(details.get("device_name", gpus[0].name))
        if len(gpus) > 1:
            name += f" (+{len(gpus) - 1} more visible; one worker per GPU is the supported layout)"
    logger.info("training device: %s", name)
    return name
