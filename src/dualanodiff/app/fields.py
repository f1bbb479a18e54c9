"""The settings of the Train, Generate and Evaluate pages, one frozen dataclass per page, each field named.

A handler takes one of these (`AppHandlers.train_config`, `generate_config`, `study_request`) and the page
restores itself from one (`last_training_fields`, `last_generation_fields`, `study_fields`); `ui` binds each
field to the widget of the same name, so no list of widgets has to be kept in the handler's order. The
defaults are the page's: a widget starts at its field's default.

Numbers are as the page's number fields give them: ``None`` when left empty, an int or a float otherwise
(the handlers check that whole numbers are whole).
"""

from __future__ import annotations

from dataclasses import dataclass

from .evaluation import StudyRequest

DEMO_BASE = "demo"  # what the base field holds for the built-in demo base
# The demo's settings (`dualanodiff demo`): what trains the tiny demo base in minutes on a CPU.
DEMO_TRAINING = {"max_steps": 400, "learning_rate": 1e-3, "rank": 16, "batch_size": 4}
# The Generate page's sampler choice that leaves the sampler, its steps and guidance to the adapters: the
# sampling recipe they carry from their base (the demo base's), else the paper's (`generate --preset adapters`).
ADAPTERS_SAMPLER = "the adapters' own"


@dataclass(frozen=True)
class TrainFields:
    """The Train page: what `AppHandlers.train_config` makes a `TrainConfig` of."""

    base: str = DEMO_BASE  # 'demo', an SD 1.5 folder or a hub id
    images: str = "all"  # "all" defect images, or the few-shot "split"
    preset: str = "paper"
    max_steps: float | None = DEMO_TRAINING["max_steps"]
    learning_rate: float | None = DEMO_TRAINING["learning_rate"]
    rank: float | None = DEMO_TRAINING["rank"]
    batch_size: float | None = DEMO_TRAINING["batch_size"]
    resolution: float | None = 0  # 0: the base's
    seed: float | None = 0
    checkpoint_every: float | None = 50
    mixed_precision: str = "no"
    start_over: bool = False  # discard this type's earlier checkpoints and adapters


@dataclass(frozen=True)
class GenerateFields:
    """The Generate page: what `AppHandlers.generate_config` makes a `GenerateConfig` of."""

    adapters: str = ""  # empty: the project's
    base: str = ""  # empty: the one the adapters trained on
    num_pairs: float | None = 16
    seed: float | None = 0
    scheduler: str = ADAPTERS_SAMPLER  # or a key of `generate.SCHEDULERS`
    steps: float | None = None  # empty: the adapters' recipe, else the paper's
    guidance: float | None = None  # empty: the adapters' recipe, else the paper's
    max_mask_area: float = 0.5
    batch_size: float | None = 8
    placement: str = "noise"  # a key of `handlers.PLACEMENTS`


@dataclass(frozen=True)
class StudyFields:
    """The Evaluate page: what `AppHandlers.study_request` makes a `StudyRequest` of (same names, same
    defaults)."""

    epochs: float | None = StudyRequest.epochs
    samples_per_epoch: float | None = StudyRequest.samples_per_epoch
    resolution: float | None = StudyRequest.resolution
    base_channels: float | None = StudyRequest.base_channels
    seed: float | None = StudyRequest.seed
