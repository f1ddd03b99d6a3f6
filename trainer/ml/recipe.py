"""What `arch="auto"` trains: a decision from the snapshot, the device and the
installed backbones, with the reason in one sentence (no Django here).

The policy, from measurements on this project's data (README "Choosing a recipe"):

- Small images with enough of them train from scratch: `resnet` at their native
  size learns CIFAR-10 to 90%, above what frozen ImageNet features of 32 px
  images upscaled sevenfold reach, and at a fraction of the feature pass's cost.
  Tiny greyscale glyphs (the digits demo) too: ImageNet features of them lose
  to a small CNN (95.8% against 98.9%).
- Everything else (photos, and small colour images with few per class) uses
  frozen features of the strongest installed backbone at the resolution it was
  trained at, plus a trained head. On a CPU the backbone must also extract the
  snapshot's features within a time budget; a GPU takes the strongest, and
  fine-tunes its top layers (kept only if validation says so).
- No backbone installed: `resnet`, saying how to install one.
"""

from dataclasses import dataclass
from typing import Any

from trainer.ml.backbones import Backbone
from trainer.ml.config import TrainConfig

SMALL_SIDE = 64  # px: a median short side at or below this is a small image
SCRATCH_PER_CLASS = 2500  # small colour images with at least this many per class train from scratch
CPU_FEATURE_BUDGET_SECONDS = 120.0  # a CPU feature pass longer than this picks a faster backbone
GPU_FINE_TUNE_EPOCHS = 10
_UNMEASURED_MS = 60.0  # a backbone with no time measured here is assumed slow on a CPU


@dataclass(frozen=True)
class DataStats:
    """What the decision looks at in a snapshot."""

    images: int
    classes: int
    median_per_class: float
    median_side: float  # px, of the shorter side
    greyscale: bool = False  # every image sampled had equal channels

    def describe(self) -> str:
        kind = "small images" if self.median_side <= SMALL_SIDE else "photos"
        tone = " greyscale" if self.greyscale and self.median_side <= SMALL_SIDE else ""
        return (
            f"{kind.replace(' images', tone + ' images')} (median side {self.median_side:.0f} px), "
            f"{self.images:,} images, {self.classes} classes"
        )


@dataclass(frozen=True)
class Recipe:
    config: TrainConfig
    reason: str  # one sentence for the job page, the API and `train --json`
    backbone: Backbone | None = None


def choose(requested: TrainConfig, stats: DataStats, *, on_gpu: bool, installed: list[Backbone]) -> Recipe:
    """The concrete config for an `auto` request; fields the user changed from
    auto's defaults carry over onto the chosen recipe."""
    overrides = _overrides(requested)
    small = stats.median_side <= SMALL_SIDE
    if small and (stats.greyscale or stats.median_per_class >= SCRATCH_PER_CLASS):
        return _scratch(stats, overrides, stats.describe())
    backbone = strongest(installed, stats.images, on_gpu=on_gpu)
    if backbone is None:
        why = f"{stats.describe()}; no pretrained backbone is installed (`manage.py fetch_weights` installs them)"
        return _scratch(stats, overrides, why)
    config = TrainConfig.defaults(backbone.name)
    if on_gpu:
        config = config.replace(fine_tune_epochs=GPU_FINE_TUNE_EPOCHS)
    config = config.replace(**{k: v for k, v in overrides.items() if k != "arch"})
    phases = "frozen features + trained head"
    if config.fine_tune_epochs:
        phases += ", then fine-tuning if it validates better"
    reason = f"{backbone.title} at {config.image_size} px, {phases}: {stats.describe()}"
    return Recipe(config, reason, backbone)


def strongest(installed: list[Backbone], images: int, *, on_gpu: bool) -> Backbone | None:
    """The best ImageNet backbone installed; on a CPU, the best whose feature
    pass over `images` fits the budget (else the fastest)."""
    if not installed:
        return None
    ranked = sorted(installed, key=lambda b: b.top1 or 0.0, reverse=True)
    if on_gpu:
        return ranked[0]
    fits = [b for b in ranked if _cpu_seconds(b, images) <= CPU_FEATURE_BUDGET_SECONDS]
    return fits[0] if fits else min(ranked, key=lambda b: _cpu_seconds(b, images))


def _cpu_seconds(backbone: Backbone, images: int) -> float:
    return (backbone.ms_per_image or _UNMEASURED_MS) * images / 1000


def _scratch(stats: DataStats, overrides: dict[str, Any], why: str) -> Recipe:
    size = int(min(max(round(stats.median_side / 8) * 8, 24), SMALL_SIDE)) if stats.median_side <= SMALL_SIDE else 32
    config = TrainConfig.defaults("resnet").replace(image_size=size)
    config = config.replace(**{k: v for k, v in overrides.items() if k != "arch"})
    return Recipe(config, f"resnet from scratch at {config.image_size} px: {why}")


def _overrides(requested: TrainConfig) -> dict[str, Any]:
    base = TrainConfig.defaults("auto").to_dict()
    return {k: v for k, v in requested.to_dict().items() if base[k] != v}
