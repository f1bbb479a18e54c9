"""What a training run does: `TrainConfig`, the two presets of METHOD section 6, and their resolution.

A preset fills only what the user left unset (None); an explicit option always wins. The resolved config is
written next to the adapters, so any run can be repeated, and its *identity* (everything that changes the
numbers) is compared before resuming, so a checkpoint is never continued with other settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..checks import MAX_RESOLUTION, check_float, check_int, check_name, check_seed
from ..errors import InputError
from ..masks.foreground import check_foreground_spec, foreground_kind

MIXED_PRECISION = ("no", "fp16", "bf16")
SAVE_DTYPES = ("fp32", "bf16", "fp16")  # the final adapters' file; checkpoints stay fp32 (exact resume)
BACKGROUND_SCALING = ("correct", "official")
SPLITS = ("strict", "paper-compat")
FOLDER_CATEGORY = "custom"  # output folder name for plain-folder data without --category


@dataclass(frozen=True)
class Preset:
    """Learning rate, length (epochs or optimizer steps) and batch size (pairs), without and with BCM."""

    learning_rate: float
    epochs: int | None
    epochs_bcm: int | None
    max_steps: int | None
    batch_size: int
    batch_size_bcm: int


# METHOD section 6: the paper's supplementary (default) and the authors' public code.
PRESETS: dict[str, Preset] = {
    "paper": Preset(
        learning_rate=5e-6, epochs=5000, epochs_bcm=2000, max_steps=None, batch_size=4, batch_size_bcm=4
    ),
    "official-code": Preset(
        learning_rate=2e-5, epochs=None, epochs_bcm=None, max_steps=5000, batch_size=4, batch_size_bcm=2
    ),
}


@dataclass
class TrainConfig:
    """One training run: one anomaly type, its data, the adapters and the optimisation.

    Data comes either from an MVTec-AD-layout root (``data``, ``category``, ``anomaly``, ``split``) or from
    plain folders (``images`` and ``masks``, optional ``foreground``). Adapters go to
    ``out/<category>/<anomaly>/``. Options left None are filled by the preset (`resolve_config`);
    ``resolution`` None means the base model's native size (512 for SD 1.5).
    """

    base: str
    out: str
    data: str | None = None
    category: str | None = None
    anomaly: str | None = None
    images: str | None = None
    masks: str | None = None
    # BCM foreground source: "auto", "u2net" (with u2net_weights), "none" or a folder of masks; None: the dataset's
    # foreground/ folder when there is one, else "auto" (resolved by `resolve_config`, recorded with the adapters)
    foreground: str | None = None
    u2net_weights: str | None = None
    split: str = "strict"
    preset: str = "paper"
    bcm: bool = False
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    rank: int = 32
    text_encoder_rank: int = 32
    alpha: float | None = None
    saim: bool = True
    saim_zero_init: bool = False
    background_latent_scaling: str = "correct"
    resolution: int | None = None
    seed: int = 0
    flips: bool | None = None  # None: on, except for orientation-defined types (`default_flips`)
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    save_dtype: str = "fp32"  # precision of the final adapters.safetensors
    checkpoint_every: int = 500  # optimizer steps between checkpoints; 0: none
    keep_checkpoints: int = 1
    # optimizer steps between probe-loss evaluations (`training.probe`: a fixed set of few-shot pairs, timesteps
    # and noise, logged to probe_log.csv); 0: none
    probe_every: int = 0
    resume: bool = True  # False: discard this type's earlier checkpoints and adapters and start over
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def uses_folder(self) -> bool:
        return self.images is not None or self.masks is not None

    def output_dir(self, anomaly: str | None = None) -> Path:
        """``out/<category>/<anomaly>``: where this type's adapters, config, log and checkpoints go."""
        kind = anomaly or self.anomaly
        if not kind:
            raise InputError("no anomaly type given (--anomaly)")
        category = check_name(self.category, "--category") if self.category else FOLDER_CATEGORY
        return Path(self.out) / category / check_name(kind, "--anomaly")


# Options that do not change the numbers a run computes: they are ignored when deciding whether a checkpoint
# or finished adapters belong to this configuration. The data paths are replaced by a hash of the files'
# contents (a moved dataset is the same data; other files at the same path are not), and epochs/max_steps by
# the run's total step count, compared separately (a checkpoint may be continued into a longer run).
_NOT_IDENTITY = {
    "out",
    "data",
    "images",
    "masks",
    "foreground",
    "u2net_weights",
    "epochs",
    "max_steps",
    "gradient_checkpointing",
    "save_dtype",
    "checkpoint_every",
    "keep_checkpoints",
    "probe_every",
    "resume",
    "progress",
}


def identity(config: TrainConfig, data_hash: str | None = None) -> dict:
    """The options that determine the trained numbers (a resumed run must match them), with the hash of
    the training files' contents (`training.sources.data_hash`)."""
    out = {k: v for k, v in config.to_dict().items() if k not in _NOT_IDENTITY}
    if data_hash is not None:
        out["data"] = data_hash
    if config.bcm:  # which source made the backgrounds (its folder may move; its kind may not change)
        out["foreground_source"] = foreground_kind(config.foreground)
    return out


def default_foreground(config: TrainConfig) -> str:
    """The BCM foreground source when none is given: the dataset's ``foreground/`` folder, else ``auto``."""
    if not config.uses_folder and config.data and config.category:
        folder = Path(config.data) / config.category / "foreground"
        if folder.is_dir():
            return str(folder)
    return "auto"


# The command-line flag of each checked option (the error names what the user typed).
_FLAGS = {"learning_rate": "--lr"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, f"--{name.replace('_', '-')}")


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill unset options from the preset and check every option; raises `InputError` naming the option."""
    if config.preset not in PRESETS:
        raise InputError(f"--preset {config.preset!r}: choose one of {', '.join(PRESETS)}")
    if config.mixed_precision not in MIXED_PRECISION:
        raise InputError(
            f"--mixed-precision {config.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)}"
        )
    if config.save_dtype not in SAVE_DTYPES:
        raise InputError(f"--save-dtype {config.save_dtype!r}: choose one of {', '.join(SAVE_DTYPES)}")
    if config.background_latent_scaling not in BACKGROUND_SCALING:
        raise InputError(
            f"--background-scaling {config.background_latent_scaling!r}: choose one of {', '.join(BACKGROUND_SCALING)}"
        )
    if config.split not in SPLITS:
        raise InputError(f"--split {config.split!r}: choose one of {', '.join(SPLITS)}")
    if config.epochs is not None and config.max_steps is not None:
        raise InputError("give either --epochs or --max-steps, not both")
    for name in ("epochs", "max_steps", "batch_size", "rank"):
        if getattr(config, name) is not None:
            check_int(getattr(config, name), _flag(name), minimum=1)
    for name in ("text_encoder_rank", "checkpoint_every", "keep_checkpoints", "probe_every"):
        check_int(getattr(config, name), _flag(name), minimum=0)
    if config.resolution is not None:
        check_int(config.resolution, "--resolution", 8, MAX_RESOLUTION)  # the multiple: `complete_config`
    for name in ("learning_rate", "alpha"):
        if getattr(config, name) is not None:
            check_float(getattr(config, name), _flag(name), above=0)
    check_seed(config.seed)
    if config.category:
        check_name(config.category, "--category")
    if config.uses_folder:
        if config.data is not None:
            raise InputError(
                "give either --data (MVTec AD layout) or --images/--masks (plain folders), not both"
            )
        if config.images is None or config.masks is None:
            raise InputError("plain-folder data needs both --images and --masks")
    elif config.data is None:
        raise InputError("no training data: give --data ROOT --category C, or --images DIR --masks DIR")
    elif not config.category:
        raise InputError("--category is required with --data")

    foreground = config.foreground
    if config.bcm:
        foreground = foreground or default_foreground(config)
        check_foreground_spec(foreground, config.u2net_weights)

    preset = PRESETS[config.preset]
    if config.epochs is None and config.max_steps is None:
        epochs = preset.epochs_bcm if config.bcm else preset.epochs
        max_steps = None if epochs is not None else preset.max_steps
    else:
        epochs, max_steps = config.epochs, config.max_steps
    return replace(
        config,
        foreground=foreground,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=config.batch_size or (preset.batch_size_bcm if config.bcm else preset.batch_size),
        learning_rate=config.learning_rate if config.learning_rate is not None else preset.learning_rate,
    )


def total_steps(config: TrainConfig, num_samples: int, num_processes: int = 1) -> int:
    """Optimizer steps of a resolved config: ``max_steps``, or ``epochs`` x steps per epoch."""
    if config.max_steps is not None:
        return int(config.max_steps)
    return int(config.epochs) * steps_per_epoch(num_samples, config.batch_size, num_processes)


def steps_per_epoch(num_samples: int, batch_size: int, num_processes: int = 1) -> int:
    """Batches per pass over the few-shot set; the last one may be short (no sample is dropped)."""
    return max(1, math.ceil(num_samples / (batch_size * num_processes)))
