"""Bulk generation to disk: `OUT/image`, `OUT/part`, `OUT/mask`, `OUT/manifest.jsonl`, `OUT/config.json`.

Resumable (a rerun makes only the missing pairs, with the same seeds: pair i uses seed + i) and shardable
(``--shard I/N`` takes the pairs i with i % N == I; under ``torchrun`` or ``accelerate launch`` each process
takes its rank's part of that). All files are written atomically by `GeneratedWriter`, so an interrupted run
never leaves a half-written PNG under a final name; rejected pairs go to ``OUT/rejected/``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from .backgrounds import Backgrounds, generation_foreground
from .checks import MAX_PAIRS, MAX_RESOLUTION, check_device, check_float, check_int, check_name, check_seed
from .data.generated import GeneratedWriter
from .errors import InputError
from .io import save_image_atomic
from .locking import output_lock
from .masks import PartMasker, build_masker, judge_mask
from .masks.placed import NONFINITE_REASON, placed_outcome
from .masks.regions import blend_weights, composite
from .model.dual_unet import read_adapter_config
from .model.encode import GLOBAL_PROMPT, PART_PROMPT
from .pipeline import (
    BACKGROUND_NOISE,
    ZERO_MEAN_NOISE,
    DualAnoDiffPipeline,
    DualAnoDiffPlacementPipeline,
    to_uint8,
)
from .placement import Placement, Placements, fewshot_mask_paths, normal_folder
from .progress import progress_bar
from .sharding import Shard, launcher_shard

SCHEDULERS = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
}
PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# "adapters" (the default): the sampling recipe the adapters carry (from their base, `model.base.SAMPLING_RECIPE`),
# the paper's preset for what it leaves unset and for adapters that carry none (every SD 1.5 adapter).
GENERATION_PRESETS = ("adapters", "paper", "official-code")
# What the recipe-able settings are when neither the call, the recipe nor a preset sets them: the paper's way.
PAPER_NOISE_AND_MASK = {"zero_mean_noise": False, "shared_initial_noise": False, "mask_method": "auto"}
# Settings a preset fills when left unset (None).
PRESET_FIELDS = ("num_pairs", "steps", "guidance", "scheduler", "background_every", "background_noise")


def preset_settings(preset: str, bcm: bool, category: str | None = None) -> dict:
    """The sampler settings of METHOD section 7 for adapters without or with BCM.

    paper: 50 steps, guidance 2.5, 1,000 pairs (the scheduler is not stated: SD 1.5's PNDM). official-code, the
    authors' inference scripts: without BCM PNDM 100 steps, guidance 2.5, 500 pairs; with BCM 50 steps, guidance
    2.0 (1.2 for screw), 500 pairs, background switched every 50 pairs (10 for screw). Background noise: the
    authors noise the unconditional and conditional background rows independently ("independent"); the paper
    preset keeps one draw for both ("shared"), this project's default before presets existed.
    """
    if preset not in GENERATION_PRESETS:
        raise InputError(f"--preset {preset!r}: choose one of {', '.join(GENERATION_PRESETS)}")
    if preset in ("paper", "adapters"):
        return dict(
            num_pairs=1000,
            steps=50,
            guidance=2.5,
            scheduler="pndm",
            background_every=50,
            background_noise="shared",
        )
    screw = category == "screw"
    return dict(
        num_pairs=500,
        steps=50 if bcm else 100,
        guidance=(1.2 if screw else 2.0) if bcm else 2.5,
        scheduler="pndm",
        background_every=10 if screw else 50,
        background_noise="independent",
    )


@dataclass
class GenerateConfig:
    """Everything that decides the generated data; written (resolved) to OUT/config.json.

    Settings left None are filled by the preset (`resolve_generate_config`); explicit values win.
    """

    base: str
    adapters: str
    out: str
    preset: str = "adapters"
    num_pairs: int | None = None  # paper: 1,000 pairs per anomaly type (official code: 500)
    batch_size: int = 8
    steps: int | None = None  # paper: 50 (official code: 100; 50 with BCM)
    guidance: float | None = None  # paper: 2.5 (official code with BCM: 2.0, 1.2 for screw)
    scheduler: str | None = None  # paper and official code: pndm
    seed: int = 0
    mixed_precision: str = "no"
    resolution: int | None = None  # default: the base's native size
    backgrounds: str | None = None  # BCM: folder of normal images
    # BCM: how the object is found in the backgrounds: auto, u2net, none or a folder of masks (matched by stem);
    # None: the source the adapters were trained with
    foreground: str | None = None
    background_every: int | None = None  # BCM: switch background every K pairs (official, screw: 10; else 50)
    background_noise: str | None = None  # BCM under guidance: "shared" or "independent" (see the pipeline)
    category: str | None = None  # for the screw settings of official-code; default: the adapters' category
    mask_method: str | None = None  # None: the adapters' recipe, else "auto"
    u2net_weights: str | None = None
    mask_threshold: float | None = None
    max_mask_area: float = 0.5
    anomaly_type: str | None = None  # default: the type the adapters were trained on (adapter_config.json)
    global_prompt: str = GLOBAL_PROMPT
    part_prompt: str = PART_PROMPT
    # Centre each initial noise map: True (both branches) or "part" (`DualAnoDiffPipeline.__call__`; small latents);
    # None: the adapters' recipe, else off
    zero_mean_noise: bool | str | None = None
    # Start the part branch from the whole branch's noise draw (`DualAnoDiffPipeline.__call__`; small latents);
    # None: the adapters' recipe, else off
    shared_initial_noise: bool | None = None
    # Placement on real normal images (`DualAnoDiffPlacementPipeline`): a folder of normal images, or None for
    # the paper's generation; the target regions: "auto" (few-shot shapes on the object) or a folder of masks.
    on_normal: str | None = None
    where: str | None = None  # default with on_normal: "auto"
    band: int | None = None  # seam band in pixels (default: 1/16 of the resolution, at least 2)
    fewshot_data: str | None = (
        None  # --data: where --where auto finds few-shot masks the adapters do not carry
    )
    fewshot_anomaly: str | None = None  # --anomaly (with --data, --category)
    departure: float = 16.0  # placed masks: the least colour change (uint8 levels) that counts
    free_part: bool = False  # placed pairs: leave the part branch free outside the region (default: held)
    # placed pairs: keep the normal image outside the defect's mask grown by the band, not only outside the region:
    # the texture the sampler redrew around the defect (a blurred patch at the demo's scale) is dropped, so
    # every pixel that differs from the normal image is the defect or its seam
    trim: bool = False
    device: str | None = None
    # Speed and memory (all but tiling keep the pairs the same to float rounding, so a resume may change them):
    compile: bool = False  # torch.compile the UNet (a one-off compilation, then faster steps)
    channels_last: bool = False
    vae_slicing: bool = False  # decode one image at a time: less peak memory for large batches
    # Decode in overlapping tiles above the VAE's native size (512 px for SD 1.5): less memory, but the tiles are
    # blended, so the pixels change slightly; below that size it does nothing.
    vae_tiling: bool = False

    def __post_init__(self):
        """Check every option that needs no file (the resolution's multiple needs the base: `generate_to_folder`).
        Options left unset (None) are filled from the preset by `resolve_generate_config`."""
        if self.preset not in GENERATION_PRESETS:
            raise InputError(f"--preset {self.preset!r}: choose one of {', '.join(GENERATION_PRESETS)}")
        if self.num_pairs is not None:
            check_int(self.num_pairs, "--num-pairs", 1, MAX_PAIRS)
        check_int(self.batch_size, "--batch-size", 1)
        if self.steps is not None:
            check_int(self.steps, "--steps", 1, 1000)  # SD's scheduler has 1000 training timesteps
        if self.guidance is not None:
            check_float(self.guidance, "--guidance")
        check_seed(self.seed)
        if self.resolution is not None:
            check_int(self.resolution, "--resolution", 8, MAX_RESOLUTION)
        check_float(self.max_mask_area, "--max-area", above=0, maximum=1)
        if self.mask_threshold is not None:
            check_float(self.mask_threshold, "--threshold", minimum=0)
        if self.zero_mean_noise is not None and self.zero_mean_noise not in ZERO_MEAN_NOISE:
            raise InputError(f"--zero-mean-noise must be False, True or 'part', got {self.zero_mean_noise!r}")
        if self.anomaly_type is not None:
            check_name(self.anomaly_type, "--anomaly-type")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InputError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.mixed_precision not in PRECISIONS:
            raise InputError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}")
        if self.background_every is not None:
            check_int(self.background_every, "--background-every", 1)
        if self.background_noise is not None and self.background_noise not in BACKGROUND_NOISE:
            raise InputError(f"--background-noise must be one of {', '.join(BACKGROUND_NOISE)}")
        if self.band is not None:
            check_int(self.band, "--band", 0, MAX_RESOLUTION)
        check_float(self.departure, "--departure", minimum=0, maximum=255)
        if self.on_normal is None and (self.where is not None or self.band is not None):
            raise InputError("--where and --band place defects on normal images: give --on-normal too")
        if self.on_normal is None and self.trim:
            raise InputError("--trim trims placed pairs: give --on-normal too")


def resolve_generate_config(
    config: GenerateConfig, bcm: bool, category: str | None = None, recipe: dict[str, Any] | None = None
) -> GenerateConfig:
    """Fill the settings left unset, for adapters with or without BCM (of ``category``): from the adapters'
    sampling ``recipe`` under ``preset="adapters"`` (then recorded as that preset), else from the preset
    (``"adapters"`` without a recipe is the paper's, and is recorded as "paper", as before recipes existed)."""
    category = config.category or category
    use_recipe = config.preset == "adapters" and bool(recipe)
    preset_name = "adapters" if use_recipe else "paper" if config.preset == "adapters" else config.preset
    source = {**preset_settings(preset_name, bcm, category), **PAPER_NOISE_AND_MASK}
    if use_recipe:
        source.update(recipe)
    fields = (*PRESET_FIELDS, *PAPER_NOISE_AND_MASK)
    filled = {k: source[k] for k in fields if getattr(config, k) is None}
    return replace(config, category=category, preset=preset_name, **filled)


# Settings that change speed and memory but not the pairs (to float rounding): a resume may change them.
SPEED_OPTIONS = ("batch_size", "compile", "channels_last", "vae_slicing")


def resolve_for_adapters(config: GenerateConfig) -> tuple[GenerateConfig, dict[str, Any], bool]:
    """``config`` with its preset resolved for its adapters (which depends on BCM and the category they were
    trained on), the adapters' training record, and whether they use BCM. Refuses a folder without adapters."""
    adapters = Path(config.adapters)
    if not (adapters / "adapters.safetensors").is_file():
        raise InputError(
            f"--adapters {adapters}: no adapters.safetensors there (train first, or check the path)"
        )
    meta = read_adapter_config(adapters)
    training = meta.get("training") or {}
    bcm = bool((meta.get("adapter") or {}).get("bcm"))
    resolved = resolve_generate_config(config, bcm, training.get("category"), meta.get("sampling"))
    return resolved, training, bcm


def apply_speed_options(
    pipe: DualAnoDiffPipeline,
    *,
    compile: bool = False,
    channels_last: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
) -> None:
    """The speed and memory switches (benchmarks/README.md measures each); only tiling can change pixels."""
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if compile:
        pipe.unet.forward = torch.compile(pipe.unet.forward)


def make_scheduler(name: str, config) -> object:
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


def adapter_identity(adapter_dir: str | Path) -> str:
    """A short content hash of the adapter weights, recorded with every pair."""
    path = Path(adapter_dir) / "adapters.safetensors"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def generate_to_folder(
    config: GenerateConfig,
    pipe=None,
    process_index: int | None = None,
    num_processes: int | None = None,
    show_progress: bool = True,
    shard: Shard | str | None = None,
) -> dict:
    """Generate the missing pairs of ``config.out`` (this process's share of them); return the summary.

    The share is ``shard`` (``--shard I/N``, e.g. a Slurm array task) divided between the processes of a
    launcher (``torchrun``, ``accelerate launch``), whose rank and count come from the environment unless
    ``process_index`` and ``num_processes`` are given. Each process holds the folder as one shard of that
    split (:func:`dualanodiff.locking.output_lock`): the shards of one split write side by side, any other
    writer of the folder is refused with the holder's name.
    """
    if process_index is None or num_processes is None:
        ranks = launcher_shard()
        device = config.device or (str(_launcher_device()) if not ranks.alone else _default_device())
    else:
        ranks = Shard(process_index, num_processes)
        device = config.device or _default_device()
    share = (Shard.parse(shard) if isinstance(shard, str) else shard or Shard()).split(ranks)
    from .model.base import check_resolution, read_base_shape

    # Everything that can be checked without the model is checked before anything is written or loaded.
    check_device(config.device)
    config, training, bcm = resolve_for_adapters(config)
    if pipe is None:
        resolution = check_resolution(config.resolution, read_base_shape(config.base))
    else:
        resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        if resolution % pipe.vae_scale_factor:
            raise InputError(f"--resolution: must be a multiple of {pipe.vae_scale_factor}, got {resolution}")
    backgrounds = None
    if bcm and config.on_normal is None:  # placed pairs take their background from the normal image itself
        if config.backgrounds is None:
            raise InputError(
                "these adapters use BCM: give --backgrounds DIR (normal images, e.g. train/good)"
            )
        config = replace(
            config, foreground=generation_foreground(config.foreground, training.get("foreground"))
        )
        # Read (and mask) the backgrounds this process's pairs use, before the diffusion model loads.
        backgrounds = Backgrounds(
            config.backgrounds,
            config.foreground,
            resolution,
            pairs=[i for i in range(config.num_pairs) if share.owns(i)],
            every=config.background_every,
            u2net_weights=config.u2net_weights,
            category=config.category,
            device=device,
        )
    placements = None
    if config.on_normal is not None:
        config, placements = _placements(config, training, resolution, device)
    masker = build_masker(config.mask_method, config.u2net_weights, config.mask_threshold, device=device)

    record_config = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    for option in ("zero_mean_noise", "shared_initial_noise"):  # recorded only when on: older folders resume
        if not record_config[option]:
            del record_config[option]
    if placements is None:  # the paper's generation: recorded as before, so older folders resume
        for option in PLACEMENT_FIELDS:
            del record_config[option]
    elif not record_config["trim"]:  # recorded only when on: placed folders made before it resume
        del record_config["trim"]
    record_config["adapter_identity"] = adapter_identity(config.adapters)
    record_config["anomaly_type"] = config.anomaly_type or training.get("anomaly")
    if bcm:
        record_config["foreground_in_training"] = training.get("foreground")
    with output_lock(config.out, "generate", shard=share):
        writer = GeneratedWriter(
            config.out, record_config, base_seed=config.seed, resume_ignore=("num_pairs", *SPEED_OPTIONS)
        )
        # Shard the index range, not the pending list: processes that start at different moments still agree.
        todo = writer.pending(config.num_pairs)
        if todo:
            _generate_pairs(
                config,
                pipe,
                writer,
                todo,
                device,
                record_config,
                show_progress,
                resolution,
                backgrounds,
                masker,
                placements,
            )
        return writer.summary(config.num_pairs)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _launcher_device() -> torch.device:
    """This rank's device under a launcher (``cuda:<local rank>`` on GPUs), as Accelerate assigns it."""
    from accelerate import PartialState

    return PartialState().device


def _generate_pairs(
    config: GenerateConfig,
    pipe: DualAnoDiffPipeline | None,
    writer: GeneratedWriter,
    todo: list[int],
    device: str,
    record_config: dict,
    show_progress: bool,
    resolution: int,
    backgrounds: Backgrounds | None,
    masker: PartMasker,
    placements: Placements | None = None,
) -> None:
    """Make and write the pairs ``todo`` (indices), ``config.batch_size`` per pipeline call."""
    # Every placement is made (and checked) before the model loads.
    placed = {i: placements.for_seed(writer.seed(i)) for i in todo} if placements is not None else None
    cls = DualAnoDiffPipeline if placements is None else DualAnoDiffPlacementPipeline
    if pipe is None:
        pipe = cls.from_pretrained(
            config.base, adapters=config.adapters, torch_dtype=PRECISIONS[config.mixed_precision]
        )
        pipe.to(device)
    elif placements is not None and not isinstance(pipe, DualAnoDiffPlacementPipeline):
        pipe = DualAnoDiffPlacementPipeline.from_pipe(pipe)
    pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    apply_speed_options(
        pipe,
        compile=config.compile,
        channels_last=config.channels_last,
        vae_slicing=config.vae_slicing,
        vae_tiling=config.vae_tiling,
    )
    mask_settings = masker.settings(max_area_fraction=config.max_mask_area)

    desc = "generating pairs" if writer.shard.alone else f"generating pairs (shard {writer.shard})"
    bar = progress_bar(total=len(todo), desc=desc, unit="pair", disable=not show_progress)
    started = time.perf_counter()
    for start in range(0, len(todo), config.batch_size):
        indices = todo[start : start + config.batch_size]
        bg_names, bg_images = None, None
        if backgrounds is not None:
            chosen = [backgrounds.for_pair(i) for i in indices]
            bg_names, bg_images = [c[0] for c in chosen], [c[1] for c in chosen]
        sampling = dict(
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            seeds=[writer.seed(i) for i in indices],
            global_prompt=config.global_prompt,
            part_prompt=config.part_prompt,
            output_type="np",
            zero_mean_noise=config.zero_mean_noise,
            shared_initial_noise=config.shared_initial_noise,
        )
        if placed is None:
            out = pipe(
                num_pairs=len(indices),
                backgrounds=torch.stack(bg_images) if bg_images else None,
                height=resolution,
                width=resolution,
                background_noise=config.background_noise,
                **sampling,
            )
        else:
            chosen = [placed[i] for i in indices]
            out = pipe(
                [c.normal for c in chosen],
                [c.region for c in chosen],
                band=config.band,
                hold_part=not config.free_part,
                **sampling,
            )
        for k, index in enumerate(indices):
            image, part = to_uint8(out.images[k]), to_uint8(out.parts[k])
            mask = masker(part)
            extra = {}
            if placed is None:
                quality = judge_mask(mask, max_area_fraction=config.max_mask_area)
            else:
                image, mask, quality, extra = _placed_pair(
                    config, writer, index, image, mask, chosen[k], out.allowed[k]
                )
            if out.nonfinite_steps[k] is not None:  # never kept, whatever its mask
                quality = quality._replace(
                    kept=False, reason=nonfinite_reason(out.nonfinite_steps[k], config)
                )
            writer.write(
                index,
                image,
                mask,
                part=part,
                kept=quality.kept,
                reject_reason=quality.reason,
                mask_area=quality.area,
                mask_method=masker.method,
                mask_settings=mask_settings,
                prompts=[config.global_prompt, config.part_prompt],
                steps=config.steps,
                guidance=config.guidance,
                scheduler=config.scheduler,
                adapter_identity=record_config["adapter_identity"],
                background=bg_names[k] if bg_names else None,
                anomaly_type=record_config["anomaly_type"],
                **extra,
            )
        bar.update(len(indices))
        bar.set_postfix(pairs_per_s=f"{bar.n / (time.perf_counter() - started):.2f}")
    bar.close()


PLACEMENT_FIELDS = (
    "on_normal", "where", "band", "fewshot_data", "fewshot_anomaly", "departure", "free_part", "trim"
)  # fmt: skip
REGION = "region"  # OUT/region/<name>.png: the area a placed pair may change (region plus band), 0/255


def _placements(
    config: GenerateConfig, training: dict[str, Any], resolution: int, device: str
) -> tuple[GenerateConfig, Placements]:
    """The resolved placement settings and the normal images and regions they read (before the model)."""
    from .masks.foreground import TEXTURE_CATEGORIES

    folder = normal_folder(config.on_normal, config.fewshot_data, config.category)
    where = config.where or "auto"
    category = config.category or training.get("category")
    foreground = config.foreground or ("none" if category in TEXTURE_CATEGORIES else "auto")
    masks = None
    if where == "auto":
        masks = fewshot_mask_paths(
            config.adapters,
            training,
            config.fewshot_data,
            category,
            config.fewshot_anomaly or training.get("anomaly"),
        )
    band = config.band if config.band is not None else max(2, resolution // 16)
    config = replace(config, on_normal=str(folder), where=where, band=band, foreground=foreground)
    placements = Placements(
        folder, where, resolution, foreground, masks, config.u2net_weights, category, device=device
    )
    return config, placements


def nonfinite_reason(step: int, config: GenerateConfig) -> str:
    """The manifest's reason for a pair whose latents stopped being finite (`masks` keeps it rejected)."""
    return f"{NONFINITE_REASON} at step {step} of {config.steps} (guidance {config.guidance:g} too high?)"


def _placed_pair(
    config: GenerateConfig,
    writer: GeneratedWriter,
    index: int,
    image,
    part_mask,
    placement: Placement,
    allowed,
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """A placed pair's region file (written first), image (trimmed to its mask with ``config.trim``), mask and
    verdict (`masks.placed`), and its record's fields."""
    save_image_atomic(Path(config.out) / REGION / f"{writer.name(index)}.png", allowed.astype("uint8") * 255)
    mask, quality, outside = placed_outcome(
        part_mask, image, placement.normal, allowed, config.departure, config.max_mask_area
    )
    if config.trim and mask.any():  # inside the mask the weight is 1: the mask stays what it was
        image = composite(image, placement.normal, blend_weights(mask, config.band))
    record = {
        "normal": str(placement.normal_path),
        "region": placement.spec,
        "part_outside_region": round(outside, 4),
    }
    return image, mask, quality, record
