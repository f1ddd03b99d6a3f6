"""The one typed config of a training run, stored on the job and beside the model.

Each architecture has its own defaults (`TrainConfig.defaults(arch)`): the seed's
baseline keeps the notebook's recipe, `resnet` the fast-training recipe, the
pretrained backbones a frozen-then-fine-tune schedule. Forms, the API and the
`train` command all start from those defaults and override what the user gave.

Three fields say "auto" and are settled when the run starts, on the device it
runs on (`resolve`): the resnet size, mixed precision and class weighting. The
job stores the resolved config, so "run again" repeats the run exactly.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainer.ml.backbones import CATALOGUE, known

# "auto" picks one of the others when the run starts (trainer.ml.recipe); "resnet"
# and "baseline" train from scratch; every other name is a pretrained backbone.
FROM_SCRATCH = ("resnet", "baseline")
ARCHITECTURES = ("auto", *FROM_SCRATCH, *CATALOGUE)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("one_cycle", "cosine", "constant")
SIZES = ("auto", "small", "medium", "large")
SWITCHES = ("auto", "on", "off")
DEVICES = ("one", "all")


# Fields whose values come from a fixed list (forms show them as menus).
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ARCHITECTURES,
    "size": SIZES,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "class_weighting": SWITCHES,
    "mixed_precision": SWITCHES,
    "devices": DEVICES,
}
# The fields a new-job form shows first; the rest sit in its advanced section.
BASIC_FIELDS = ("arch", "epochs", "batch_size", "learning_rate", "image_size")
HELP = {
    "arch": "auto: chosen from the data when the job starts (from scratch for small images with enough of them, "
    "else the strongest installed backbone); resnet: fast from-scratch CNN; baseline: the seed notebook's CNN; "
    "the others are ImageNet backbones.",
    "size": "resnet width. auto: large on a GPU, medium on a CPU.",
    "batch_size": "Halved (with an SGD learning rate) until an epoch has at least 10 steps on small datasets.",
    "epochs": "For pretrained backbones: the most epochs training the new head on the cached frozen features "
    "(early stopping usually ends it sooner).",
    "learning_rate": "The peak rate of the one-cycle schedule.",
    "warmup_fraction": "One-cycle: share of the steps rising to the peak rate.",
    "translate": "Random shift as a fraction of the side (2 px at 32 px = 0.0625), border reflected.",
    "rotation": "Random rotation, degrees either way.",
    "zoom": "Random zoom, fraction either way.",
    "contrast": "Random contrast change, fraction either way.",
    "class_weighting": "auto: weight classes by inverse frequency when the largest has over 1.5x the smallest.",
    "early_stopping_patience": "Stop after this many epochs without a better validation loss (0 = off); "
    "the best weights are kept.",
    "weight_averaging": "Evaluate and serve a moving average of the weights over the last steps.",
    "flip_tta": "Predict on the image and its mirror and average the two.",
    "mixed_precision": "auto: float16 compute on a GPU, bfloat16 on a CPU with bfloat16 units (AMX, AVX-512 BF16), "
    "full precision elsewhere.",
    "devices": "one: the worker's one device; all: every GPU the worker sees, one replica each "
    "(tf.distribute.MirroredStrategy), batch size and learning rate multiplied by their number "
    "(from-scratch architectures).",
    "fine_tune_epochs": "Pretrained backbones: epochs fine-tuning the backbone's top layers after the head "
    "(0 = off); kept only if it beats the frozen head on validation.",
    "fine_tune_learning_rate": "Pretrained backbones: the (low) rate for fine-tuning.",
    "fine_tune_layers": "Pretrained backbones: how many of the backbone's top layers fine-tuning trains "
    "(batch normalisation stays frozen).",
    "feature_views": "Pretrained backbones: views of each training image whose features are cached: "
    "1 the image, 2 also its mirror.",
}


# Small datasets get smaller batches, down to 8, so an epoch has at least this many steps.
MIN_STEPS_PER_EPOCH = 10


class ConfigError(ValueError):
    """A config value is out of range or unknown; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "auto"
    # resnet width: small (16/64/64 channels), medium (32/128/128), large (64/256/256, airbench's);
    # auto = large on a GPU, medium on a CPU.
    size: str = "auto"
    image_size: int = 32
    epochs: int = 12
    batch_size: int = 512
    optimizer: str = "sgd"  # sgd is Nesterov momentum 0.9
    learning_rate: float = 0.4  # the peak of the one-cycle schedule (ResNet-9's, at batch 512)
    schedule: str = "one_cycle"
    warmup_fraction: float = 0.2  # one-cycle: share of the steps spent rising to the peak
    # Decoupled (Keras applies it outside the momentum), so 10x the coupled 5e-4 of
    # the speed records: with momentum 0.9 their L2 term acts ten times over.
    weight_decay: float = 5e-3
    label_smoothing: float = 0.2
    # Augmentation, inside the model and active only in training; 0 switches one off.
    flip: bool = True
    translate: float = 0.0625  # fraction of the side: 2 px at 32 px, reflected at the border (crop)
    rotation: float = 0.0  # degrees either way
    zoom: float = 0.0  # fraction either way
    contrast: float = 0.0  # fraction either way
    class_weighting: str = "auto"  # auto: on when the largest class has over 1.5x the smallest
    early_stopping_patience: int = 0  # epochs without val_loss improvement; 0 = off; best weights restored
    weight_averaging: bool = True  # exponential moving average of the weights (resnet recipe)
    flip_tta: bool = True  # average predictions on the image and its mirror
    mixed_precision: str = "auto"  # auto: on for a GPU or a CPU with bfloat16 units
    devices: str = "one"  # all: data-parallel over every GPU the worker sees (trainer.ml.train.distribution)
    # Pretrained backbones: `epochs` train the head on the frozen base, then these fine-tune it all.
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    fine_tune_layers: int = 30
    feature_views: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, architectures())
        _check_choice("size", self.size, SIZES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("class_weighting", self.class_weighting, SWITCHES)
        _check_choice("mixed_precision", self.mixed_precision, SWITCHES)
        _check_choice("devices", self.devices, DEVICES)
        _check_range("image_size", self.image_size, 24, 512)
        _check_range("epochs", self.epochs, 1, 1000)
        _check_range("fine_tune_epochs", self.fine_tune_epochs, 0, 1000)
        _check_range("fine_tune_layers", self.fine_tune_layers, 1, 1000)
        _check_range("feature_views", self.feature_views, 1, 2)
        _check_range("batch_size", self.batch_size, 1, 4096)
        _check_range("early_stopping_patience", self.early_stopping_patience, 0, 1000)
        _check_range("seed", self.seed, 0, 2**31 - 1)
        for name in ("learning_rate", "fine_tune_learning_rate"):
            if not 0 < getattr(self, name) <= 10:
                raise ConfigError(f"{name}: must be in (0, 10]")
        for name, high in (("warmup_fraction", 1), ("weight_decay", 0.1), ("label_smoothing", 0.5),
                           ("translate", 0.5), ("rotation", 180), ("zoom", 0.9), ("contrast", 1)):  # fmt: skip
            if not 0 <= getattr(self, name) <= high:
                raise ConfigError(f"{name}: must be between 0 and {high:g}")
        if self.image_size < 32 and self.is_pretrained:
            raise ConfigError(f"image_size: {self.arch} needs at least 32 px")

    @property
    def is_pretrained(self) -> bool:
        return is_pretrained_arch(self.arch)

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.fine_tune_epochs if self.is_pretrained else 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def defaults(cls, arch: str = "auto") -> "TrainConfig":
        """The recommended config for an architecture."""
        _check_choice("arch", arch, architectures())
        if arch == "baseline":
            # The seed notebook: Adam 1e-3, 10 epochs of batch 64, nothing else.
            return cls(arch=arch, epochs=10, batch_size=64, optimizer="adam", learning_rate=1e-3,
                       schedule="constant", weight_decay=0.0, label_smoothing=0.0, flip=False, translate=0.0,
                       class_weighting="off", weight_averaging=False, flip_tta=False,
                       mixed_precision="off")  # fmt: skip
        if arch not in ("auto", *FROM_SCRATCH):
            # Features first: the head trains on cached frozen features (so epochs are
            # cheap and early stopping decides); augmentation only matters to fine-tuning.
            # Head settings measured on CIFAR-10 300/class features (README "Choosing a recipe"): an L2
            # penalty (weight_decay) and input dropout matched scikit-learn's logistic regression.
            return cls(arch=arch, image_size=known()[arch].image_size, epochs=200, batch_size=64, optimizer="adam",
                       learning_rate=3e-3, schedule="constant", weight_decay=1e-3, label_smoothing=0.0,
                       translate=0.1, rotation=10.0, zoom=0.1, early_stopping_patience=20, weight_averaging=False,
                       flip_tta=False, mixed_precision="off", fine_tune_epochs=0,
                       fine_tune_learning_rate=3e-5)  # fmt: skip
        return cls(arch=arch)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The architecture's defaults overridden by `values` (strings accepted, as from forms)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(sorted(unknown))}")
        try:
            typed = {k: coerce(known[k].type, v) for k, v in values.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad config value: {exc}") from exc
        return cls.defaults(typed.get("arch", cls.arch)).replace(**typed)

    def resolve(self, *, on_gpu: bool, class_counts: list[int], cpu_bf16: bool = False) -> "TrainConfig":
        """Settle the "auto" fields for this device and data (the result has none
        left), and shrink the batch for small datasets. `cpu_bf16`: the CPU has
        bfloat16 matrix units, where mixed precision pays off as on a GPU."""
        size = self.size if self.size != "auto" else ("large" if on_gpu else "medium")
        mixed = self.mixed_precision if self.mixed_precision != "auto" else ("on" if on_gpu or cpu_bf16 else "off")
        weighting = self.class_weighting
        if weighting == "auto":
            present = [c for c in class_counts if c > 0]
            weighting = "on" if present and max(present) > 1.5 * min(present) else "off"
        batch_size, learning_rate = self.batch_size, self.learning_rate
        train_images = sum(class_counts)
        while batch_size > 8 and train_images < MIN_STEPS_PER_EPOCH * batch_size:
            batch_size //= 2
            if self.optimizer == "sgd":
                learning_rate /= 2  # the linear scaling rule keeps SGD's step size per image
        return self.replace(
            size=size,
            mixed_precision=mixed,
            class_weighting=weighting,
            batch_size=batch_size,
            learning_rate=learning_rate,
        )


def is_pretrained_arch(arch: str) -> bool:
    return arch not in ("auto", *FROM_SCRATCH)


def architectures() -> tuple[str, ...]:
    """ARCHITECTURES and the backbone files installed here."""
    return (*ARCHITECTURES, *(name for name in known() if name not in CATALOGUE))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: unknown value {value!r}; choose from {', '.join(choices)}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")


def coerce(kind: Any, value: Any) -> Any:
    # Values come from forms, JSON and the command line; accept "10" for 10 and "on" for True.
    if kind in (bool, "bool"):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                raise ValueError(f"{value!r} is not true or false")
            return lowered in ("true", "on", "1", "yes")
        if value not in (True, False, 0, 1):
            raise ValueError(f"{value!r} is not true or false")
        return bool(value)
    if kind in (int, "int"):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if kind in (float, "float"):
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value
