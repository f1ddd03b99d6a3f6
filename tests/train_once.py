"""Train each tiny model once per test session.

Most tests need *a* trained model (to serve, export, score or report on), not to
watch one train: `train_now` and the `trained_version` fixture go through the real
service (`training_job_run`: recipe, data loading, storing the file, the report,
the charts) with `trainer.ml.train.train` answered from this cache when the same
config has already been trained on the same pixels. The first call trains for
real; later ones copy its saved model into the job's folder and replay its epochs
through the job's reporter, so each test still gets its own file, rows and history.
The report's charts of the same numbers are drawn once per process and stored anew.

The cache lives in a folder all pytest-xdist workers share; a file lock makes the
first worker train while the others wait for its result. Tests of training itself
call the service without this and train every time.
"""

import fcntl
import hashlib
import json
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainer.ml import train as ml_train
from trainer.reports import charts

_pictures: dict[str, bytes] = {}

_root: Path | None = None


def use_folder(folder: Path) -> None:
    global _root
    folder.mkdir(parents=True, exist_ok=True)
    _root = folder


def _key(config: Any, data: Any) -> str:
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(json.dumps(data.classes).encode())
    for split in (data.train, data.val, data.test):
        digest.update(split.x.tobytes())
        digest.update(split.y.tobytes())
    return digest.hexdigest()[:32]


def _replay(result: Any, reporter: Any) -> None:
    """What the job's page and history would have seen: one epoch_end per epoch."""
    if reporter is None:
        return
    epochs = len(next(iter(result.history.values()), []))
    reporter.start(0, 1)
    for epoch in range(epochs):
        reporter.epoch_end(epoch, {name: values[epoch] for name, values in result.history.items()})


def _cached(real: Callable[..., Any]) -> Callable[..., Any]:
    def train(config: Any, data: Any, out_dir: Path, reporter: Any = None, **kwargs: Any) -> Any:
        assert _root is not None, "tests.train_once.use_folder was not called"
        entry = _root / _key(config, data)
        with (_root / f"{entry.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one worker trains, the others wait for its files
            trained_here = not (entry / "result.pickle").exists()
            if trained_here:
                result = real(config, data, entry / "model", reporter, **kwargs)
                (entry / "result.pickle").write_bytes(pickle.dumps(result))
            else:
                result = pickle.loads((entry / "result.pickle").read_bytes())
        shutil.copytree(entry / "model", out_dir, dirs_exist_ok=True)
        result.model_dir = out_dir
        if not trained_here:
            _replay(result, reporter)  # the reporter heard the real training's epochs as they ran
        return result

    return train


def _drawn_once(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """The report's charts of a cached model are the same picture: drawn once (seaborn, 0.3 s each)."""

    def drawn(*args: Any, **kwargs: Any) -> bytes:
        key = f"{draw.__name__}{json.dumps([args, kwargs], sort_keys=True, default=str)}"
        if key not in _pictures:
            _pictures[key] = draw(*args, **kwargs)
        return _pictures[key]

    return drawn


@contextmanager
def trained_once() -> Iterator[None]:
    """Within this block, training the same config on the same pixels again is a copy."""
    real = (ml_train.train, charts.confusion_heatmap, charts.reliability_diagram)
    ml_train.train = _cached(real[0])
    charts.confusion_heatmap, charts.reliability_diagram = _drawn_once(real[1]), _drawn_once(real[2])
    try:
        yield
    finally:
        ml_train.train, charts.confusion_heatmap, charts.reliability_diagram = real
