"""The whole protocol in one resumable run: train, generate (DualAnoDiff and baselines), quality metrics,
downstream localization, classification, and the summary tables.

    from dualanodiff.benchmark import BenchmarkConfig, run_benchmark
    summary = run_benchmark(BenchmarkConfig(data="mvtec", base="sd15", out="bench", categories=["hazelnut"]))

Every step (one anomaly type's training or generation, one category's quality / localization /
classification for one method) ends by writing ``OUT/steps/<step>.json`` atomically, holding the step's
*key* (every setting that decides its result, including those of the steps it reads) and its result. A
rerun skips every step whose marker exists with the same key, so an interrupted benchmark resumes at
the first unfinished step (the long steps also resume inside: training from its checkpoint, generation
from the last pair, the U-Net from its last epoch). A marker with another key means the folder was made
with other settings; that is refused before anything runs rather than mixing two experiments.

Sizes come from a profile (the paper's by default, ``quick`` for a rough look) and every one of them can
be set; the demo runs the same function at toy sizes.

Layout of OUT: ``adapters/<category>/<type>/``, ``generated/<method>/<category>/<type>/``, then the
evaluation layout of :mod:`dualanodiff.evaluate.protocol` (``quality/``, ``localization/``,
``classification/``), ``steps/``, ``config.json``, and the tables ``summary.md``, ``summary.json``,
``localization.csv``, ``quality.csv``, ``classification.csv``.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from .baselines import run_baseline
from .data.generated import MANIFEST, read_generated
from .data.mvtec import (
    SPLIT_MODES,
    anomaly_samples,
    few_shot_count,
    list_anomaly_types,
    list_categories,
    normal_train_samples,
)
from .errors import InputError
from .evaluate.classification import ClassificationConfig
from .evaluate.localization import LocalizationConfig
from .evaluate.protocol import (
    CLASSIFICATION_DIR,
    LOCALIZATION_DIR,
    QUALITY_DIR,
    check_category,
    check_quality_images,
    classify_category,
    load_quality_models,
    localize_category,
    paper_milestones,
    quality_of_category,
    write_tables,
)
from .generate import (
    PAPER_NOISE_AND_MASK,
    PLACEMENT_FIELDS,
    GenerateConfig,
    generate_to_folder,
    preset_settings,
    resolve_generate_config,
)
from .io import write_json_atomic, write_text_atomic
from .locking import output_lock
from .masks.folder import MASK_CONFIG_KEYS
from .masks.foreground import SOURCES as FOREGROUND_SOURCES
from .progress import progress_shown
from .training import TrainConfig, train_adapters

log = logging.getLogger(__name__)

METHODS = ("dualanodiff", "dualanodiff-placed", "crop-paste", "perlin", "none")
GENERATORS = (
    "dualanodiff",
    "dualanodiff-placed",
    "crop-paste",
    "perlin",
)  # methods that write generated pairs
# Methods that sample the adapters (trained once per type, shared): free generation and placement on the
# category's train/good images (`DualAnoDiffPlacementPipeline`).
ADAPTER_METHODS = ("dualanodiff", "dualanodiff-placed")

# Sizes left unset (None) are taken from the profile. "paper": METHOD sections 6-8. "quick": a rough look
# in a fraction of the time (the authors' code's training preset, shortened), not comparable with the paper.
# Keys: the settings' flat names (:data:`SETTINGS`).
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "train_preset": "paper",
        "gen_preset": "paper",  # pairs and sampler steps come from the generation preset
        "loc_epochs": 200,
        "loc_samples_per_epoch": 500,
        "loc_runs": 3,
        "cls_epochs": 30,
    },
    "quick": {
        "train_preset": "official-code",
        "train_steps": 500,
        "gen_preset": "paper",
        "num_pairs": 100,
        "sampler_steps": 25,
        "loc_epochs": 20,
        "loc_samples_per_epoch": 500,
        "loc_runs": 1,
        "cls_epochs": 5,
    },
}


def _default(config: type, name: str) -> Any:
    """The default of a field of a task's config dataclass: a benchmark setting that passes straight to a
    task takes its default from there, so each default is written once."""
    (f,) = [f for f in fields(config) if f.name == name]
    if f.default is MISSING:
        raise TypeError(f"{config.__name__}.{name} has no plain default")
    return f.default


# The benchmark's part of each task's config: the settings that change a result and are the same for every
# category and type (the per-run ones, data, type, output folders and seeds, the runner fills in), each under
# the task config's own name, with that config's default; a size or preset left None comes from the profile.


@dataclass(frozen=True)
class TrainSettings:
    """Adapter training (:class:`TrainConfig`; ``bcm``, ``foreground``, ``u2net_weights``, ``mixed_precision``,
    ``seed`` and ``split`` are on :class:`BenchmarkConfig`, one setting for training and generation alike)."""

    preset: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    resolution: int | None = None  # None: the base's native size
    rank: int = _default(TrainConfig, "rank")
    text_encoder_rank: int = _default(TrainConfig, "text_encoder_rank")
    alpha: float | None = _default(TrainConfig, "alpha")
    saim: bool = _default(TrainConfig, "saim")  # False: the two branches do not interact (an ablation)
    saim_zero_init: bool = _default(TrainConfig, "saim_zero_init")
    background_latent_scaling: str = _default(TrainConfig, "background_latent_scaling")
    flips: bool | None = _default(TrainConfig, "flips")
    save_dtype: str = _default(TrainConfig, "save_dtype")
    probe_every: int = _default(TrainConfig, "probe_every")  # steps between probe losses (`training.probe`)


@dataclass(frozen=True)
class GenerateSettings:
    """Generation (:class:`GenerateConfig`) of DualAnoDiff's pairs and, for ``num_pairs`` and ``resolution``, of
    the baselines'; ``perlin_source`` is the Perlin baseline's alone. Unset sampler settings come from the
    generation preset. The benchmark sets every sampling setting itself, the paper's unless given: a recipe the
    adapters carry does not apply, so a benchmark's tables mean the same whatever base it runs on."""

    preset: str | None = None  # "paper" | "official-code" (`generate.preset_settings`)
    num_pairs: int | None = None
    steps: int | None = None
    guidance: float | None = None  # None: the preset's, per category (official-code, BCM: 1.2 for screw)
    scheduler: str | None = None
    background_every: int | None = None  # BCM
    background_noise: str | None = None  # BCM: "shared" | "independent"
    # centre the initial noise: True (both branches) or "part" (the demo's 16x16 latents need it)
    zero_mean_noise: bool | str = PAPER_NOISE_AND_MASK["zero_mean_noise"]
    # the part branch starts from the whole's noise draw
    shared_initial_noise: bool = PAPER_NOISE_AND_MASK["shared_initial_noise"]
    batch_size: int = _default(GenerateConfig, "batch_size")
    resolution: int | None = None  # None: the base's size (dualanodiff), the normal images' (baselines)
    mask_method: str = PAPER_NOISE_AND_MASK["mask_method"]
    mask_threshold: float | None = _default(GenerateConfig, "mask_threshold")
    max_mask_area: float = _default(GenerateConfig, "max_mask_area")
    vae_tiling: bool = _default(GenerateConfig, "vae_tiling")  # above the VAE's native size: other pixels
    # dualanodiff-placed: seam band (None: 1/16 of the resolution), the least colour change that counts in a
    # placed mask, the part branch left free outside the region, pairs trimmed to the defect's mask
    band: int | None = _default(GenerateConfig, "band")
    departure: float = _default(GenerateConfig, "departure")
    free_part: bool = _default(GenerateConfig, "free_part")
    trim: bool = _default(GenerateConfig, "trim")
    # perlin: folder of texture images (DRAEM uses DTD); None: another normal image of the category, its blocks
    # shuffled (`baselines.perlin`)
    perlin_source: str | None = None


@dataclass(frozen=True)
class LocalizationSettings:
    """Downstream localization (:class:`LocalizationConfig`; its learning-rate milestones follow the epochs)."""

    epochs: int | None = None
    samples_per_epoch: int | None = None
    runs: int | None = None
    batch_size: int = _default(LocalizationConfig, "batch_size")
    lr: float = _default(LocalizationConfig, "lr")
    resolution: int = _default(LocalizationConfig, "resolution")
    base_channels: int = _default(LocalizationConfig, "base_channels")
    select_on: str = _default(LocalizationConfig, "select_on")
    paper_compat_f1: bool = _default(LocalizationConfig, "paper_compat_f1")


@dataclass(frozen=True)
class ClassificationSettings:
    """Anomaly-type classification (:class:`ClassificationConfig`; at most ``num_pairs`` images per type), whether
    it runs, and the ResNet-34's ImageNet weights."""

    enabled: bool = True
    imagenet_weights: str | None = None  # None: torchvision's file in the torch hub cache
    # train the ResNet-34 from random values (not the paper's protocol: the tables say so); without it a missing
    # ImageNet file is refused (`resolve_imagenet_weights`), as `evaluate classification` refuses it
    random_init: bool = _default(ClassificationConfig, "random_init")
    epochs: int | None = None
    batch_size: int = _default(ClassificationConfig, "batch_size")
    lr: float = _default(ClassificationConfig, "lr")
    resolution: int = _default(ClassificationConfig, "resolution")
    repeats_per_epoch: int = _default(ClassificationConfig, "repeats_per_epoch")


# {BenchmarkConfig field: (its settings class, the task config it feeds)}
SECTIONS: dict[str, tuple[type, type]] = {
    "train": (TrainSettings, TrainConfig),
    "generate": (GenerateSettings, GenerateConfig),
    "localization": (LocalizationSettings, LocalizationConfig),
    "classification": (ClassificationSettings, ClassificationConfig),
}


@dataclass
class BenchmarkConfig:
    """Everything the benchmark does: its own settings (what it runs on, where, and the settings one flag gives
    training and generation alike), then each task's, in :attr:`train`, :attr:`generate`, :attr:`localization`
    and :attr:`classification`. Sizes left ``None`` come from the profile (``quick`` or the paper's).

    Every setting also has a flat name, its command-line flag's (``loc_epochs`` for ``localization.epochs``,
    ``num_pairs`` for ``generate.num_pairs``: :data:`SETTINGS`), by which :meth:`with_settings` replaces and
    :meth:`setting` reads it: ``cfg.with_settings(loc_epochs=2, guidance=2.5)``."""

    data: str
    out: str
    base: str | None = None  # needed for the dualanodiff methods
    categories: list[str] | None = None  # None: every category of the root
    anomalies: list[str] | None = None  # None: every type of each category
    methods: list[str] = field(default_factory=lambda: [m for m in METHODS if m != "dualanodiff-placed"])
    quick: bool = False
    split: str = "strict"
    seed: int = 0
    device: str | None = None
    progress: bool = True
    # training and generation alike
    bcm: bool = _default(TrainConfig, "bcm")
    # BCM foregrounds: "auto" | "u2net" (with u2net_weights) | "none"; None: ROOT/<category>/foreground/ if it
    # exists, else "auto"
    foreground: str | None = None
    u2net_weights: str | None = None  # BCM's u2net foregrounds, and the u2net / auto mask method
    mixed_precision: str = _default(TrainConfig, "mixed_precision")
    train: TrainSettings = field(default_factory=TrainSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    # generation quality (IS and IC-LPIPS)
    quality: bool = True
    inception_weights: str | None = None
    lpips_vgg_weights: str | None = None
    is_splits: int = 10
    lpips_size: int = 256
    # "all": every generated image, as the paper; "kept": the pairs the mask gate kept
    quality_images: str = "all"
    localization: LocalizationSettings = field(default_factory=LocalizationSettings)
    classification: ClassificationSettings = field(default_factory=ClassificationSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def profile(self) -> str:
        return "quick" if self.quick else "paper"

    def setting(self, name: str) -> Any:
        """A setting by its flat name (:data:`SETTINGS`)."""
        section, key = _place(name)
        return getattr(self if section is None else getattr(self, section), key)

    def with_settings(self, **settings: Any) -> BenchmarkConfig:
        """A copy with the given settings, by their flat names (:data:`SETTINGS`), replaced."""
        own: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for name, value in settings.items():
            section, key = _place(name)
            if section is None:
                own[key] = value
            else:
                nested.setdefault(section, {})[key] = value
        return replace(self, **own, **{s: replace(getattr(self, s), **kv) for s, kv in nested.items()})


# A setting's flat name: the section's prefix and the field's name, but for those named here; the names are the
# command's (``--loc-epochs`` sets ``loc_epochs``), those of PROFILES and of the settings before they were grouped.
_PREFIXES = {"train": "train_", "generate": "", "localization": "loc_", "classification": "cls_"}
_FLAT_NAMES = {
    "train.max_steps": "train_steps",
    "train.learning_rate": "train_lr",
    "generate.preset": "gen_preset",
    "generate.steps": "sampler_steps",
    "generate.batch_size": "gen_batch_size",
    "generate.resolution": "gen_resolution",
    "localization.select_on": "select_on",
    "localization.paper_compat_f1": "paper_compat_f1",
    "classification.enabled": "classification",
    "classification.imagenet_weights": "imagenet_weights",
    "classification.random_init": "random_init",
}


def _flat_settings() -> dict[str, tuple[str | None, str]]:
    out: dict[str, tuple[str | None, str]] = {}
    for f in fields(BenchmarkConfig):
        places = (
            [(f.name, g.name) for g in fields(SECTIONS[f.name][0])]
            if f.name in SECTIONS
            else [(None, f.name)]
        )
        for section, key in places:
            name = key if section is None else _FLAT_NAMES.get(f"{section}.{key}", _PREFIXES[section] + key)
            if name in out:
                raise TypeError(f"two benchmark settings are named {name}")
            out[name] = (section, key)
    return out


# {flat name: (the BenchmarkConfig field holding it, or None for the benchmark's own; the field's name)}
SETTINGS: dict[str, tuple[str | None, str]] = _flat_settings()


def _place(name: str) -> tuple[str | None, str]:
    try:
        return SETTINGS[name]
    except KeyError:
        raise TypeError(f"BenchmarkConfig has no setting {name!r}") from None


def task_fields(settings: Any) -> dict[str, Any]:
    """The fields of a section's settings that its task config has, by name (the others are the benchmark's)."""
    (task,) = [t for s, t in SECTIONS.values() if isinstance(settings, s)]
    names = {f.name for f in fields(task)}
    return {k: v for k, v in asdict(settings).items() if k in names}


FLAGS = {"loc_runs": "--runs", "train_rank": "--rank", "train_text_encoder_rank": "--text-encoder-rank"}


def flag_of(name: str) -> str:
    """The command-line flag of a setting (its flat name), for error messages."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def resolve_benchmark_config(config: BenchmarkConfig) -> BenchmarkConfig:
    """Fill unset sizes from the profile, check every option, expand categories; InputError names the option."""
    updates = {k: v for k, v in PROFILES[config.profile].items() if config.setting(k) is None}
    if "train_steps" in updates and config.train.epochs is not None:
        del updates["train_steps"]  # an explicit epoch count wins over the profile's step count
    cfg = config.with_settings(**updates)
    preset = preset_settings(cfg.generate.preset, cfg.bcm)  # pairs and steps do not depend on the category
    cfg.generate = replace(
        cfg.generate,
        num_pairs=preset["num_pairs"] if cfg.generate.num_pairs is None else cfg.generate.num_pairs,
        steps=preset["steps"] if cfg.generate.steps is None else cfg.generate.steps,
    )
    root = Path(cfg.data)
    if not root.is_dir():
        raise InputError(f"--data {root}: dataset root does not exist or is not a folder")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise InputError(f"--methods {','.join(cfg.methods)}: choose from {', '.join(METHODS)}")
    cfg.methods = [m for m in METHODS if m in cfg.methods]
    if any(m in ADAPTER_METHODS for m in cfg.methods) and not cfg.base:
        raise InputError("--base is required for the dualanodiff methods (or leave them out of --methods)")
    if cfg.split not in SPLIT_MODES:
        raise InputError(f"--split {cfg.split!r}: choose one of {', '.join(SPLIT_MODES)}")
    check_quality_images(cfg.quality_images)
    if cfg.foreground not in (None, *FOREGROUND_SOURCES):
        raise InputError(f"--foreground {cfg.foreground!r}: choose one of {', '.join(FOREGROUND_SOURCES)}")
    if cfg.localization.select_on not in ("heldout", "test"):
        raise InputError(f"--select-on {cfg.localization.select_on!r}: choose heldout or test")
    for name in (
        "num_pairs",
        "sampler_steps",
        "loc_epochs",
        "loc_samples_per_epoch",
        "loc_runs",
        "cls_epochs",
        "is_splits",
        "gen_batch_size",
    ):
        if int(cfg.setting(name)) < 1:
            raise InputError(f"{flag_of(name)} must be at least 1, got {cfg.setting(name)}")
    if cfg.train.epochs is not None and cfg.train.max_steps is not None:
        raise InputError("give either --train-epochs or --train-steps, not both")
    generators = any(m in GENERATORS for m in cfg.methods)
    if cfg.quality and generators:
        if cfg.generate.num_pairs < cfg.is_splits:
            raise InputError(
                f"--num-pairs {cfg.generate.num_pairs} is below --is-splits {cfg.is_splits}: the Inception Score "
                "needs one image per split (lower --is-splits, or --no-quality)"
            )
        from .evaluate.quality import resolve_inception_weights, resolve_vgg_weights

        resolve_inception_weights(cfg.inception_weights)  # fail now, not after hours of training
        resolve_vgg_weights(cfg.lpips_vgg_weights)
    cls = cfg.classification
    if cls.random_init or (cls.enabled and generators):
        from .evaluate.classification import resolve_imagenet_weights

        # as `evaluate classification`: no weights (given or cached) without --random-init, or both, are refused
        resolve_imagenet_weights(cls.imagenet_weights, cls.random_init)
    cfg.categories = list(cfg.categories) if cfg.categories else list_categories(root)
    if not cfg.categories:
        raise InputError(f"--data {root}: no category folders (<category>/train, <category>/test) found")
    for category in cfg.categories:
        check_category(root, category)
    return cfg


def anomaly_types_by_category(cfg: BenchmarkConfig) -> dict[str, list[str]]:
    """The types each category is benchmarked on; every listed type must exist in some chosen category."""
    out = {}
    for category in cfg.categories:
        kinds = list_anomaly_types(cfg.data, category)
        out[category] = [k for k in kinds if cfg.anomalies is None or k in cfg.anomalies]
    if cfg.anomalies is not None:
        found = {k for kinds in out.values() for k in kinds}
        missing = [a for a in cfg.anomalies if a not in found]
        if missing:
            raise InputError(
                f"--anomalies: {', '.join(missing)} not found in {', '.join(cfg.categories)}; types there: "
                + "; ".join(
                    f"{c}: {', '.join(list_anomaly_types(cfg.data, c)) or 'none'}" for c in cfg.categories
                )
            )
    dropped = [c for c, kinds in out.items() if not kinds]
    for c in dropped:
        log.info("benchmark: %s has none of the chosen anomaly types; left out", c)
    return {c: kinds for c, kinds in out.items() if kinds}


def _validate_data(cfg: BenchmarkConfig, types: dict[str, list[str]]) -> None:
    """Read every input once (masks present, enough images) before any model is built."""
    for category, kinds in types.items():
        if not normal_train_samples(cfg.data, category):
            raise InputError(f"{Path(cfg.data) / category / 'train' / 'good'}: no normal training images")
        for kind in kinds:
            n = len(anomaly_samples(cfg.data, category, kind))
            if few_shot_count(n, cfg.split) < 1:
                raise InputError(
                    f"{Path(cfg.data) / category / 'test' / kind}: {n} image(s) are too few for the few-shot "
                    "split (at least 3: a third trains the generator, the rest are test images)"
                )


# ------------------------------------------------------------------------------------------- steps


STEP_ACTIONS = ("train", "generate", "quality", "localization", "classification")


@dataclass(frozen=True)
class Step:
    """One unit of work as plain data, so any process (a Ray worker) can run it by name: the action and its
    arguments (``method``, ``category``, ``type`` as the action takes them), its key, the steps whose outputs
    it reads (an executor starts it once those are done), and whether it computes on the torch device (a GPU
    where there is one) or on CPUs only. Its id is ``action/args...``."""

    action: str
    args: tuple[str, ...]
    key: dict[str, Any] = field(compare=False, hash=False)
    needs: tuple[str, ...] = ()
    gpu: bool = True

    @property
    def id(self) -> str:
        return "/".join((self.action, *self.args))

    def marker(self, out: Path) -> Path:
        """The record that the step finished: its key and result."""
        return out / "steps" / (self.id.replace("/", "--") + ".json")

    def started(self, out: Path) -> Path:
        """A generation step's key as it started, so that a rerun sees what an unfinished folder was made with."""
        return out / "steps" / (self.id.replace("/", "--") + ".started.json")


# What a rerun of an unfinished generation step may change: the mask gate (a post-process that `masks` re-applies
# to the pairs already made) and the number of pairs (the writer extends a folder).
REGATE_KEYS = frozenset(MASK_CONFIG_KEYS)
RESUMABLE_KEYS = REGATE_KEYS | {"num_pairs"}


def run_step(cfg: BenchmarkConfig, types: dict[str, list[str]], step: Step) -> dict[str, Any]:
    """Run one step of a resolved config in this process and record it as done; return its status (what an
    executor's worker calls)."""
    return _Benchmark(cfg, types).run_step(step)


def _type_seed(seed: int, category: str, kind: str) -> int:
    """A per-type seed, so generators whose pairs do not depend on the type (Perlin) differ between types."""
    return (seed + zlib.crc32(f"{category}/{kind}".encode())) % 2**31


class _Benchmark:
    def __init__(self, cfg: BenchmarkConfig, types: dict[str, list[str]]):
        self.cfg = cfg
        self.types = types
        self.out = Path(cfg.out)
        self._quality_models = None

    # -- folders -------------------------------------------------------------------------------------
    def generated_dir(self, method: str, category: str, kind: str) -> Path:
        return self.out / "generated" / method / category / kind

    def generated_sets(self, method: str, category: str, include_rejected: bool = False) -> dict[str, list]:
        """{type: kept pairs (and rejected ones if asked)} of a method's generated folders, each record
        labelled with its type."""
        if method == "none":
            return {}
        out = {}
        for kind in self.types[category]:
            pairs = read_generated(
                self.generated_dir(method, category, kind), include_rejected=include_rejected
            )
            out[kind] = [replace(p, record={**p.record, "anomaly_type": kind}) for p in pairs]
        return out

    # -- configs -------------------------------------------------------------------------------------
    def train_config(self, category: str, kind: str) -> TrainConfig:
        c = self.cfg
        return TrainConfig(
            **task_fields(c.train),
            base=c.base,
            out=str(self.out / "adapters"),
            data=c.data,
            category=category,
            anomaly=kind,
            split=c.split,
            bcm=c.bcm,
            seed=c.seed,
            mixed_precision=c.mixed_precision,
            progress=c.progress,
            foreground=c.foreground,
            u2net_weights=c.u2net_weights if c.foreground == "u2net" else None,
        )

    def train_key(self, category: str, kind: str) -> dict[str, Any]:
        skip = {
            "out",
            "data",
            "progress",
            "checkpoint_every",
            "keep_checkpoints",
            "probe_every",
            "resume",
            "gradient_checkpointing",
        }
        return {k: v for k, v in self.train_config(category, kind).to_dict().items() if k not in skip}

    def generate_config(self, category: str, kind: str, placed: bool = False) -> GenerateConfig:
        """The generation of ``kind``'s DualAnoDiff pairs; ``placed``: on the category's train/good images, in
        regions drawn from the few-shot masks (the adapters' training record names them)."""
        c = self.cfg
        backgrounds = foreground = None
        if (
            c.bcm and not placed
        ):  # the same source as training (`TrainConfig.foreground`), on the train/good images
            backgrounds = str(Path(c.data) / category / "train" / "good")
            dataset_masks = Path(c.data) / category / "foreground"
            foreground = c.foreground
            if foreground is None and dataset_masks.is_dir():
                foreground = str(dataset_masks / "train" / "good")
        gen = GenerateConfig(
            **{
                **task_fields(c.generate),
                "band": c.generate.band if placed else None,
                "trim": c.generate.trim and placed,  # only placed pairs (GenerateConfig refuses it otherwise)
            },
            base=c.base,
            adapters=str(self.train_config(category, kind).output_dir()),
            out=str(self.generated_dir("dualanodiff-placed" if placed else "dualanodiff", category, kind)),
            on_normal=str(Path(c.data) / category / "train" / "good") if placed else None,
            category=category,
            seed=_type_seed(c.seed, category, kind),
            mixed_precision=c.mixed_precision,
            backgrounds=backgrounds,
            foreground=foreground,
            u2net_weights=c.u2net_weights,
            device=c.device,
        )
        return resolve_generate_config(gen, bcm=c.bcm, category=category)

    def generate_key(self, method: str, category: str, kind: str) -> dict[str, Any]:
        c = self.cfg
        if method in ADAPTER_METHODS:
            gen = {
                k: v
                for k, v in asdict(self.generate_config(category, kind, method != "dualanodiff")).items()
                if k not in ("adapters", "out", "device", "backgrounds", "foreground", "batch_size")
                and (method != "dualanodiff" or k not in PLACEMENT_FIELDS)  # as before: older folders resume
                and not (k == "trim" and not v)  # recorded only when on, as in the generated folder
            }
            return {"method": method, "train": self.train_key(category, kind), **gen}
        return {
            "method": method,
            "category": category,
            "anomaly": kind,
            "num_pairs": c.generate.num_pairs,
            "seed": _type_seed(c.seed, category, kind),
            "split": c.split,
            "resolution": c.generate.resolution,
            "anomaly_source": c.generate.perlin_source if method == "perlin" else None,
        }

    def localization_config(self) -> LocalizationConfig:
        c = self.cfg
        return LocalizationConfig(
            **task_fields(c.localization),
            lr_milestones=paper_milestones(c.localization.epochs),
            seed=c.seed,
            device=c.device,
        )

    def classification_config(self) -> ClassificationConfig:
        c = self.cfg
        return ClassificationConfig(
            **task_fields(c.classification),  # random_init: the tables name it, "(random init: ...)"
            seed=c.seed,
            device=c.device,
            max_per_type=c.generate.num_pairs,
        )

    def upstream(self, method: str, category: str) -> dict[str, Any]:
        """The keys of the generation steps a category-level step reads."""
        if method == "none":
            return {}
        return {kind: self.generate_key(method, category, kind) for kind in self.types[category]}

    # -- step bodies ---------------------------------------------------------------------------------
    def run_step(self, step: Step) -> dict[str, Any]:
        """Run one step and record it as done (its marker, written atomically); return its status."""
        if step.action not in STEP_ACTIONS:
            raise ValueError(f"unknown benchmark step action {step.action!r}")
        if step.action == "generate":
            self._regate_if_changed(step)
            write_json_atomic(step.started(self.out), {"id": step.id, "key": _jsonable(step.key)})
        started = time.perf_counter()
        result = getattr(self, f"_{step.action}")(*step.args)
        seconds = round(time.perf_counter() - started, 3)
        write_json_atomic(
            step.marker(self.out), {"id": step.id, "key": step.key, "result": result, "seconds": seconds}
        )
        return {"id": step.id, "status": "done", "seconds": seconds}

    def _train(self, category: str, kind: str) -> dict[str, Any]:
        return {"adapters": str(train_adapters(self.train_config(category, kind)))}

    def _generate(self, method: str, category: str, kind: str) -> dict[str, Any]:
        c = self.cfg
        if method in ADAPTER_METHODS:
            summary = generate_to_folder(
                self.generate_config(category, kind, placed=method != "dualanodiff"),
                process_index=0,
                num_processes=1,
                show_progress=c.progress,
            )
        else:
            summary = run_baseline(
                method,
                c.data,
                category,
                kind,
                c.generate.num_pairs,
                self.generated_dir(method, category, kind),
                seed=_type_seed(c.seed, category, kind),
                split=c.split,
                resolution=c.generate.resolution,
                anomaly_source_dir=c.generate.perlin_source if method == "perlin" else None,
            )
        if not summary.get("kept"):
            raise InputError(
                f"{self.generated_dir(method, category, kind)}: none of the {summary.get('complete')} generated "
                f"pairs passed the mask quality gate (see reject_reason in its manifest.jsonl); train longer, or "
                "raise --max-mask-area"
            )
        return summary

    def _regate_if_changed(self, step: Step) -> None:
        """An unfinished DualAnoDiff generation rerun with other mask settings (say, a higher --max-mask-area
        after no pair passed the gate): re-apply the gate to the pairs already made, as `dualanodiff masks`
        does, so that the generation then resumes with the new settings instead of refusing the folder."""
        method, category, kind = step.args
        path = step.started(self.out)
        folder = self.generated_dir(method, category, kind)
        if method != "dualanodiff" or not path.is_file() or not (folder / MANIFEST).is_file():
            return
        old, new = _read_json(path).get("key") or {}, _jsonable(step.key)
        if all(old.get(k) == new.get(k) for k in REGATE_KEYS):
            return
        from .masks import make_masks_for_folder

        c = self.cfg
        log.info("benchmark: %s: other mask settings; the gate is applied again to the pairs made", step.id)
        make_masks_for_folder(
            folder,
            method=c.generate.mask_method,
            u2net_weights=c.u2net_weights,
            threshold=c.generate.mask_threshold,
            max_area_fraction=c.generate.max_mask_area,
            show_progress=c.progress,
            device=c.device,
        )

    def _quality(self, method: str, category: str) -> dict[str, Any]:
        if self._quality_models is None:
            self._quality_models = load_quality_models(
                self.cfg.inception_weights, self.cfg.lpips_vgg_weights, self.cfg.device
            )
        result = quality_of_category(
            self.cfg.data,
            category,
            self.generated_sets(method, category, include_rejected=True),
            self._quality_models,
            split=self.cfg.split,
            images=self.cfg.quality_images,
            is_splits=self.cfg.is_splits,
            lpips_size=self.cfg.lpips_size,
            seed=self.cfg.seed,
        )
        write_json_atomic(self.out / QUALITY_DIR / method / f"{category}.json", result)
        return {"is": result["is"], "ic_lpips": result["ic_lpips"]}

    def _localization(self, method: str, category: str) -> dict[str, Any]:
        r = localize_category(
            self.cfg.data,
            category,
            self.generated_sets(method, category),
            self.localization_config(),
            self.out / LOCALIZATION_DIR / method / category,
            split=self.cfg.split,
            anomaly_types=self.types[category],
        )
        return {"metrics": r["metrics"], "best_run": r["best_run"], "selection": r["selection"]}

    def _classification(self, method: str, category: str) -> dict[str, Any]:
        r = classify_category(
            self.cfg.data,
            category,
            self.generated_sets(method, category),
            self.classification_config(),
            self.out / CLASSIFICATION_DIR / method / category,
            split=self.cfg.split,
            imagenet_weights=self.cfg.classification.imagenet_weights,
        )
        return {"accuracy": r["accuracy"], "n_test": r["n_test"]}

    # -- plan ----------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        c = self.cfg
        loc_key = {
            k: v
            for k, v in asdict(self.localization_config()).items()
            if k not in ("device", "num_workers", "eval_batch_size")
        }
        cls_key = {
            k: v
            for k, v in asdict(self.classification_config()).items()
            if k not in ("device", "num_workers")
        }
        weights = c.classification.imagenet_weights
        cls_key["imagenet_weights"] = Path(weights).name if weights else None
        q_key = {
            "images": c.quality_images,
            "is_splits": c.is_splits,
            "lpips_size": c.lpips_size,
            "seed": c.seed,
            "inception_weights": Path(c.inception_weights).name if c.inception_weights else None,
            "lpips_vgg_weights": Path(c.lpips_vgg_weights).name if c.lpips_vgg_weights else None,
        }
        out: list[Step] = []
        for category, kinds in self.types.items():
            for kind in kinds:
                if any(m in ADAPTER_METHODS for m in c.methods):
                    out.append(Step("train", (category, kind), self.train_key(category, kind)))
                for method in (m for m in GENERATORS if m in c.methods):
                    out.append(
                        Step(
                            "generate",
                            (method, category, kind),
                            self.generate_key(method, category, kind),
                            needs=(f"train/{category}/{kind}",) if method in ADAPTER_METHODS else (),
                            gpu=method in ADAPTER_METHODS,  # the baselines cut, paste and draw on CPUs
                        )
                    )
            base = {"split": c.split, "types": kinds}

            def reads(method: str, category: str = category, kinds: list[str] = kinds) -> tuple[str, ...]:
                """The generation steps a category-level step of ``method`` reads."""
                return () if method == "none" else tuple(f"generate/{method}/{category}/{k}" for k in kinds)

            for method in (m for m in GENERATORS if m in c.methods and c.quality):
                out.append(
                    Step(
                        "quality",
                        (method, category),
                        {**base, **q_key, "data": self.upstream(method, category)},
                        needs=reads(method),
                    )
                )
            for method in c.methods:
                out.append(
                    Step(
                        "localization",
                        (method, category),
                        {**base, **loc_key, "data": self.upstream(method, category)},
                        needs=reads(method),
                    )
                )
            if c.classification.enabled and len(kinds) >= 2:
                for method in (m for m in GENERATORS if m in c.methods):
                    out.append(
                        Step(
                            "classification",
                            (method, category),
                            {**base, **cls_key, "data": self.upstream(method, category)},
                            needs=reads(method),
                        )
                    )
            elif c.classification.enabled:
                log.info("benchmark: %s has one anomaly type; no classification", category)
        return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); delete it to redo that step") from None


def _check_markers(steps: list[Step], out: Path) -> dict[str, dict]:
    """Finished steps {id: marker}; InputError when a marker was written with other settings, or when an
    unfinished generation was started with settings that its folder cannot take (only the mask gate and the
    number of pairs may change: :data:`RESUMABLE_KEYS`)."""
    done, conflicts = {}, []
    for step in steps:
        path = step.marker(out)
        key = _jsonable(step.key)
        if not path.is_file():
            started = step.started(out)
            if started.is_file():
                old = _read_json(started).get("key") or {}
                changed = [k for k in set(old) | set(key) if old.get(k) != key.get(k)]
                if set(changed) - RESUMABLE_KEYS:
                    diff = _differences({k: old.get(k) for k in changed}, {k: key.get(k) for k in changed})
                    conflicts.append(f"{step.id} ({'; '.join(diff[:3])})")
            continue
        marker = _read_json(path)
        if marker.get("key") != key:
            diff = _differences(marker.get("key") or {}, key)
            conflicts.append(f"{step.id} ({'; '.join(diff[:3])})")
        else:
            done[step.id] = marker
    if conflicts:
        raise InputError(
            f"{out}: holds a benchmark made with other settings; steps that would change: "
            + ", ".join(conflicts[:5])
            + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
            + ". Use another --out, or delete those steps' files under steps/ (and their outputs) to redo them"
        )
    return done


def _summary_header(cfg: BenchmarkConfig, types: dict[str, list[str]], statuses: list[dict]) -> str:
    count = {k: sum(s["status"] == k for s in statuses) for k in ("done", "skipped", "failed", "not run")}
    unfinished = [s for s in statuses if s["status"] in ("failed", "not run")]
    gen, loc = cfg.generate, cfg.localization
    lines = [
        "# DualAnoDiff benchmark",
        "",
        f"- data: `{cfg.data}`; split: {cfg.split}; profile: {cfg.profile}"
        + (" (rough look, not comparable with the paper)" if cfg.quick else ""),
        f"- methods: {', '.join(cfg.methods)}",
        "- categories and anomaly types: " + "; ".join(f"{c}: {', '.join(k)}" for c, k in types.items()),
        f"- generation preset: {gen.preset}; guidance: "
        + (str(gen.guidance) if gen.guidance is not None else "the preset's (per category)")
        + (
            f"; BCM foregrounds: {cfg.foreground or 'the dataset foreground/ folder, else auto'}"
            if cfg.bcm
            else ""
        ),
        "- IS / IC-LPIPS: "
        + (
            ("every generated image" if cfg.quality_images == "all" else "kept pairs only")
            if cfg.quality
            else "off"
        ),
        f"- sizes: {gen.num_pairs} pairs per type, {gen.steps} sampler steps; U-Net {loc.epochs} epochs x "
        f"{loc.samples_per_epoch} samples at {loc.resolution} px, best of {loc.runs} run(s), epoch chosen "
        f"on the {'test set (optimistic)' if loc.select_on == 'test' else 'held-out data'}",
        f"- steps: {count['done']} run now, {count['skipped']} finished before"
        + (f", **{count['failed']} failed, {count['not run']} not run**" if unfinished else ""),
        "",
    ]
    if unfinished:
        lines += ["## Steps that did not finish (rerun the same command to retry them)", ""]
        lines += [f"- `{s['id']}`: {s['status']}: {s.get('error') or s.get('reason')}" for s in unfinished]
        lines.append("")
    return "\n".join(lines) + "\n"


def benchmark_steps(cfg: BenchmarkConfig, types: dict[str, list[str]]) -> list[Step]:
    """The steps of a resolved config, in the order the in-process runner takes them."""
    return _Benchmark(cfg, types).steps()


def _check_settings(bench: _Benchmark, runner: StepRunner) -> None:
    """The settings of every step, checked as the step will check them, before the first step runs (a rank
    the base cannot take must not surface after the baselines have run)."""
    from .checks import check_device
    from .model.base import check_resolution, read_base_shape
    from .training.config import resolve_config
    from .training.loop import complete_config

    c = bench.cfg
    if runner.in_process:  # elsewhere the device is the workers' (a Ray runner checks the cluster's GPUs)
        check_device(c.device)
    category, kinds = next(iter(bench.types.items()))
    if any(m in ADAPTER_METHODS for m in c.methods):
        complete_config(resolve_config(bench.train_config(category, kinds[0])))
        check_resolution(bench.generate_config(category, kinds[0]).resolution, read_base_shape(c.base))
    bench.localization_config().validate()
    if c.classification.enabled:
        bench.classification_config().validate()


class StepRunner(Protocol):
    """How the unfinished steps run; the command layer chooses one (:mod:`dualanodiff.executors` holds the
    others), so this module never knows where its steps run."""

    in_process: bool  # the steps run in this process (so the torch device is checked here)

    def check(self) -> None:
        """Refuse bad options (InputError naming the flag) before anything is written."""

    def run(
        self, cfg: BenchmarkConfig, types: dict[str, list[str]], steps: list[Step], out: Path
    ) -> dict[str, dict[str, Any]]:
        """Run ``steps`` (the unfinished ones, in plan order); return {step id: status}."""
        ...


class InProcess:
    """The local executor: every step here, in order; a failing step stops the run (its error raised)."""

    in_process = True

    def check(self) -> None:
        pass

    def run(
        self, cfg: BenchmarkConfig, types: dict[str, list[str]], steps: list[Step], out: Path
    ) -> dict[str, dict[str, Any]]:
        bench = _Benchmark(cfg, types)  # one for all steps: the quality models load once
        statuses = {}
        with progress_shown(cfg.progress):
            for i, step in enumerate(steps, 1):
                prefix = f"[benchmark {i}/{len(steps)}] {step.id}"
                log.info("%s: running", prefix)
                statuses[step.id] = bench.run_step(step)
                log.info("%s: done in %.1f s", prefix, statuses[step.id]["seconds"])
        return statuses


def run_benchmark(config: BenchmarkConfig, runner: StepRunner | None = None) -> dict[str, Any]:
    """Run (or resume) the whole protocol; return {"config", "types", "steps", "results", "summary"}.

    Writes ``OUT/config.json`` first (the resolved settings), then runs the unfinished steps with ``runner``:
    by default here in order (per category: training and generation of each type, then quality,
    localization, classification per method), or e.g. as Ray tasks
    (:class:`dualanodiff.executors.ray_benchmark.RayRunner`), each started once the steps it reads are done.
    Then the tables (``summary.md``, ``summary.json``, CSV files). Locally a failing step stops the run (its
    error is raised); on Ray the others go on, and ``steps`` says which failed (with the error) and which
    did not run because they read a failed one.
    """
    runner = InProcess() if runner is None else runner
    runner.check()
    cfg = resolve_benchmark_config(config)
    types = anomaly_types_by_category(cfg)
    if not types:
        raise InputError("benchmark: no category has any of the chosen anomaly types")
    _validate_data(cfg, types)
    out = Path(cfg.out)
    bench = _Benchmark(cfg, types)
    _check_settings(bench, runner)
    steps = bench.steps()
    with output_lock(out, "benchmark"):
        return _run_locked(cfg, types, steps, out, runner)


def _run_locked(
    cfg: BenchmarkConfig, types: dict[str, list[str]], steps: list[Step], out: Path, runner: StepRunner
) -> dict[str, Any]:
    """The run proper, inside the folder's output lock: markers, steps, tables."""
    done = _check_markers(steps, out)
    write_json_atomic(out / "config.json", {"profile": cfg.profile, **cfg.to_dict(), "anomaly_types": types})
    statuses = {
        s.id: {"id": s.id, "status": "skipped", "seconds": done[s.id].get("seconds")}
        for s in steps
        if s.id in done
    }
    todo = [s for s in steps if s.id not in done]
    log.info("benchmark: %d step(s) finished before, %d to run", len(statuses), len(todo))
    if todo:
        statuses.update(runner.run(cfg, types, todo, out))
    ordered = [statuses[s.id] for s in steps]
    markdown, results = write_tables(out, cfg.data)
    summary_md = _summary_header(cfg, types, ordered) + markdown
    write_text_atomic(out / "summary.md", summary_md)
    summary = {"config": _jsonable(cfg.to_dict()), "types": types, "steps": ordered, "results": results}
    write_json_atomic(out / "summary.json", summary)
    log.info("benchmark: tables in %s and %s", out / "summary.md", out / "summary.json")
    return {**summary, "summary": summary_md}


__all__ = [
    "GENERATORS",
    "METHODS",
    "PROFILES",
    "SETTINGS",
    "BenchmarkConfig",
    "ClassificationSettings",
    "GenerateSettings",
    "InProcess",
    "LocalizationSettings",
    "Step",
    "StepRunner",
    "TrainSettings",
    "anomaly_types_by_category",
    "benchmark_steps",
    "resolve_benchmark_config",
    "run_benchmark",
    "run_step",
]
