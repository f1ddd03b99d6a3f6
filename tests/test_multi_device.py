"""A job that asks for every GPU of its host (`devices="all"`) trains data-parallel with
tf.distribute.MirroredStrategy, its batch and rate scaled by the replicas; tested on the
CPU split into two logical devices, in a fresh process (TensorFlow fixes its devices once)."""

import json
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np
from trainer.ml.config import TrainConfig
from trainer.ml.train import Split, TrainData, distribution, train

rng = np.random.default_rng(0)
colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])

def split(n):
    y = np.repeat(np.arange(3), n)
    x = np.clip(colours[y][:, None, None, :] + rng.integers(-40, 40, (len(y), 24, 24, 3)), 0, 255)
    return Split(x.astype(np.uint8), y)

data = TrainData(["red", "green", "blue"], split(24), split(8), split(8))
out = {}
for devices in ("one", "all"):
    config = TrainConfig.from_dict({"arch": "baseline", "image_size": 24, "epochs": 4, "batch_size": 8,
                                    "devices": devices, "learning_rate": 0.01, "optimizer": "adam"})
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Path(tmp) / "checkpoints"
        result = train(config, data, Path(tmp) / "model", checkpoint_dir=checkpoints)
        metrics = result.metrics
        out[devices] = {"replicas": metrics["replicas"], "batch": metrics["global_batch"],
                        "accuracy": metrics["accuracy"], "epochs": len(result.history["loss"]),
                        "checkpointed": any(checkpoints.rglob("*")),
                        "strategy": type(distribution(config)).__name__}
print("RESULT " + json.dumps(out))
"""


def test_all_devices_trains_mirrored_over_two_logical_cpus_with_the_batch_scaled():
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    out = json.loads(lines[0].removeprefix("RESULT "))
    assert out["one"]["replicas"] == 1 and out["one"]["strategy"] != "MirroredStrategy"
    assert out["all"]["replicas"] == 2 and out["all"]["strategy"] == "MirroredStrategy"
    assert (out["one"]["batch"], out["all"]["batch"]) == (8, 16)  # each replica keeps the configured 8
    for devices in ("one", "all"):  # both learn the colours, checkpointing every epoch
        assert out[devices]["accuracy"] >= 0.9 and out[devices]["epochs"] == 4, out
        assert out[devices]["checkpointed"], out
