"""What a training run tells its caller, and asks it, while it runs. Free of TensorFlow,
so the job services (imported by web processes) can name these without loading it."""

from typing import Protocol


class Reporter(Protocol):
    def start(self, epoch: int, steps: int) -> None: ...
    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...
    def batch_end(self, epoch: int, step: int, steps: int, images_per_second: float) -> None: ...
    def should_stop(self) -> bool: ...
    def phase(self, name: str, done: int, total: int) -> None: ...


class Interrupted(Exception):
    """Raised out of a run, mid-epoch or mid-phase, once `should_stop()` said yes (a cancel,
    a worker shutting down, a time limit). The last finished epoch's checkpoint is intact:
    the interrupted epoch is not recorded as done."""
