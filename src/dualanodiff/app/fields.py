"""The settings of the Train, Generate and Evaluate pages, one frozen dataclass per page, each field named.

A handler takes one of these (`AppHandlers.train_config`, `generate_config`, `study_request`) and the page
restores itself from one (`last_training_fields`, `last_generation_fields`, `study_fields`); `ui` binds each
field to the widget of the same name, so no list of widgets has to be kept in the handler's order. The
defaults are the page's: a widget starts at its field's default.

The defaults are the demo's sizes, which finish in minutes on a 2-core CPU with the demo base; `paper_training`
and `paper_study` give the paper's (a GPU's hours), and `quick_training` and `quick_study` bring the defaults
back, each keeping what is not a size (the base, the data, the seed).

Numbers are as the page's number fields give them: an int or a float (the handlers check that whole numbers
are whole), or ``None``. Gradio 6 shows a number field without a value as 0 and sends 0 for it (an emptied one
as None), so for the fields a recipe fills (`UNSET_BY_ZERO`) 0 and None both mean "the recipe's": the page
says "0: the recipe's", and these dataclasses use 0 for it, what the page shows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..demo.config import MODES, DemoConfig
from ..evaluate.localization import LocalizationConfig
from .evaluation import StudyRequest

DEMO_BASE = "demo"  # what the base field holds for the built-in demo base
_DEMO = DemoConfig()
# The demo's training (`dualanodiff demo`): 750 steps of 2 pairs at 64 px, minutes on a 2-core CPU with one thread.
DEMO_TRAINING = {
    "max_steps": MODES["full"]["train_steps"],
    "learning_rate": _DEMO.train_lr,
    "rank": _DEMO.train_rank,
    "batch_size": _DEMO.train_batch_size,
}
DEMO_SAMPLER_STEPS = MODES["full"]["sampler_steps"]  # the demo base's recipe: what its adapters sample with
# The Generate page's sampler choice that leaves the sampler, its steps and guidance to the adapters: the
# sampling recipe they carry from their base (the demo base's), else the paper's (`generate --preset adapters`).
ADAPTERS_SAMPLER = "the adapters' own"
# Number fields where 0 (what the page shows for "no value") means "the recipe's": none of them has 0 as a
# value of its own (a run of 0 steps, a learning rate or batch of 0; guidance 0 would drop the prompt).
UNSET_BY_ZERO = {
    "train": ("max_steps", "learning_rate", "batch_size"),
    "generate": ("steps", "guidance"),
}


@dataclass(frozen=True)
class TrainFields:
    """The Train page: what `AppHandlers.train_config` makes a `TrainConfig` of."""

    base: str = DEMO_BASE  # 'demo', an SD 1.5 folder or a hub id
    # The few-shot "split" (the paper's: the first third trains, the rest is for the Evaluate page's study), or
    # "all" defect images (more to learn from, but then nothing is left that the study could test on)
    images: str = "split"
    preset: str = "paper"
    max_steps: float | None = DEMO_TRAINING["max_steps"]
    learning_rate: float | None = DEMO_TRAINING["learning_rate"]
    rank: float | None = DEMO_TRAINING["rank"]
    batch_size: float | None = DEMO_TRAINING["batch_size"]
    resolution: float | None = 0  # 0: the base's
    seed: float | None = 0
    checkpoint_every: float | None = 50
    mixed_precision: str = "no"


def quick_training(current: TrainFields) -> TrainFields:
    """The demo's sizes (minutes on a CPU), keeping the base, the data choice and the seed of ``current``."""
    sizes = TrainFields()
    return replace(sizes, base=current.base, images=current.images, seed=current.seed)


def paper_training(current: TrainFields) -> TrainFields:
    """The paper's training (its preset's length, learning rate and batch; rank 32 at the base's resolution;
    bf16 on a GPU), keeping the base, the data choice and the seed of ``current``."""
    return replace(
        current,
        preset="paper",
        max_steps=0,  # 0: the preset's (`UNSET_BY_ZERO`)
        learning_rate=0,
        rank=32,
        batch_size=0,
        resolution=0,
        checkpoint_every=500,
        mixed_precision="bf16",
    )


@dataclass(frozen=True)
class GenerateFields:
    """The Generate page: what `AppHandlers.generate_config` makes a `GenerateConfig` of."""

    adapters: str = ""  # empty: the project's
    base: str = ""  # empty: the one the adapters trained on
    num_pairs: float | None = 16
    seed: float | None = 0
    scheduler: str = ADAPTERS_SAMPLER  # or a key of `generate.SCHEDULERS`
    steps: float | None = 0  # 0: the adapters' recipe, else the paper's (`UNSET_BY_ZERO`)
    guidance: float | None = 0  # 0: the adapters' recipe, else the paper's
    max_mask_area: float = 0.5
    batch_size: float | None = 8
    placement: str = "noise"  # a key of `handlers.PLACEMENTS`


@dataclass(frozen=True)
class StudyFields:
    """The Evaluate page: what `AppHandlers.study_request` makes a `StudyRequest` of (same names, same
    defaults: the demo's detector, minutes on a CPU)."""

    epochs: float | None = StudyRequest.epochs
    samples_per_epoch: float | None = StudyRequest.samples_per_epoch
    resolution: float | None = StudyRequest.resolution
    base_channels: float | None = StudyRequest.base_channels
    seed: float | None = StudyRequest.seed


def quick_study(current: StudyFields) -> StudyFields:
    """The demo's detector sizes, keeping the resolution (the images') and the seed of ``current``."""
    return replace(StudyFields(), resolution=current.resolution, seed=current.seed)


def paper_study(current: StudyFields) -> StudyFields:
    """The paper's detector (`evaluate localization`'s defaults: epochs, samples, 256 px, width 64), keeping
    the seed; the study still trains one run per detector where the paper trains three."""
    paper = LocalizationConfig
    return replace(
        current,
        epochs=paper.epochs,
        samples_per_epoch=paper.samples_per_epoch,
        resolution=paper.resolution,
        base_channels=paper.base_channels,
    )
