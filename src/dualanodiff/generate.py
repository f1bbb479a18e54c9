"""Bulk generation to disk: `OUT/image`, `OUT/part`, `OUT/mask`, `OUT/manifest.jsonl`, `OUT/config.json`.

Resumable (a rerun makes only the missing pairs, with the same seeds: pair i uses seed + i) and shardable
(``--shard I/N`` takes the pairs i with i % N == I; under ``torchrun`` or ``accelerate launch`` each process
takes its rank's part of that). All files are written atomically by `GeneratedWriter`, so an interrupted run
never leaves a half-written PNG under a final name; rejected pairs go to ``OUT/rejected/``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from .baselines.write import GeneratedWriter
from .checks import MAX_PAIRS, MAX_RESOLUTION, check_device, check_float, check_int, check_name, check_seed
from .errors import InputError
from .locking import output_lock
from .masks import PartMasker, build_masker, judge_mask
from .model.encode import GLOBAL_PROMPT, PART_PROMPT
from .pipeline import DualAnoDiffPipeline, to_uint8
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


@dataclass
class GenerateConfig:
    """Everything that decides the generated data; written to OUT/config.json."""

    base: str
    adapters: str
    out: str
    num_pairs: int = 1000  # paper: 1,000 pairs per anomaly type (official code: 500)
    batch_size: int = 8
    steps: int = 50
    guidance: float = 2.5
    scheduler: str = "pndm"
    seed: int = 0
    mixed_precision: str = "no"
    resolution: int | None = None  # default: the base's native size
    backgrounds: str | None = None  # BCM: folder of normal images
    foreground: str | None = (
        None  # BCM: their foreground masks (by stem); none: the whole image is background
    )
    background_every: int = 50  # BCM: switch background every K pairs (10 for screw in the official setting)
    mask_method: str = "auto"
    u2net_weights: str | None = None
    mask_threshold: float | None = None
    max_mask_area: float = 0.5
    anomaly_type: str | None = None  # default: the type the adapters were trained on (adapter_config.json)
    global_prompt: str = GLOBAL_PROMPT
    part_prompt: str = PART_PROMPT
    device: str | None = None
    # Speed and memory (all but tiling keep the pairs the same to float rounding, so a resume may change them):
    compile: bool = False  # torch.compile the UNet (a one-off compilation, then faster steps)
    channels_last: bool = False
    vae_slicing: bool = False  # decode one image at a time: less peak memory for large batches
    # Decode in overlapping tiles above the VAE's native size (512 px for SD 1.5): less memory, but the tiles are
    # blended, so the pixels change slightly; below that size it does nothing.
    vae_tiling: bool = False

    def __post_init__(self):
        """Check every option that needs no file (the resolution's multiple needs the base: `generate_to_folder`)."""
        check_int(self.num_pairs, "--num-pairs", 1, MAX_PAIRS)
        check_int(self.batch_size, "--batch-size", 1)
        check_int(self.steps, "--steps", 1, 1000)  # SD's scheduler has 1000 training timesteps
        check_float(self.guidance, "--guidance")
        check_seed(self.seed)
        if self.resolution is not None:
            check_int(self.resolution, "--resolution", 8, MAX_RESOLUTION)
        check_float(self.max_mask_area, "--max-area", above=0, maximum=1)
        if self.mask_threshold is not None:
            check_float(self.mask_threshold, "--threshold", minimum=0)
        if self.anomaly_type is not None:
            check_name(self.anomaly_type, "--anomaly-type")
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.mixed_precision not in PRECISIONS:
            raise InputError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}")
        check_int(self.background_every, "--background-every", 1)


# Settings that change speed and memory but not the pairs (to float rounding): a resume may change them.
SPEED_OPTIONS = ("batch_size", "compile", "channels_last", "vae_slicing")


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


def adapter_anomaly_type(adapter_dir: str | Path) -> str | None:
    """The anomaly type recorded by `dualanodiff train` in the adapters' metadata, if any."""
    from .model.dual_unet import read_adapter_config

    return (read_adapter_config(adapter_dir).get("training") or {}).get("anomaly")


def load_backgrounds(
    folder: str | Path, foreground: str | Path | None, resolution: int
) -> list[tuple[str, torch.Tensor]]:
    """BCM backgrounds, (3, R, R) in [-1, 1]: normal images with the object blacked out, made exactly as
    the training backgrounds are (`data.pairs.black_out_object`)."""
    from .data.folder import folder_normals
    from .data.images import load_mask, load_rgb
    from .data.pairs import black_out_object, image_to_tensor, mask_to_tensor

    normals = folder_normals(folder, foreground_dir=foreground)
    if not normals:
        raise InputError(f"--backgrounds {folder}: no images found")
    out = []
    for sample in normals:
        rgb = load_rgb(sample.image)
        fg = None
        if sample.foreground is not None:
            fg = mask_to_tensor(load_mask(sample.foreground, size=(rgb.shape[1], rgb.shape[0])), resolution)
        out.append((sample.image.name, black_out_object(image_to_tensor(rgb, resolution), fg)))
    return out


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
    from .model.dual_unet import read_adapter_config

    # Everything that can be checked without the model is checked before anything is written or loaded.
    check_device(config.device)
    adapters = Path(config.adapters)
    if not (adapters / "adapters.safetensors").is_file():
        raise InputError(
            f"--adapters {adapters}: no adapters.safetensors there (train first, or check the path)"
        )
    if pipe is None:
        resolution = check_resolution(config.resolution, read_base_shape(config.base))
        bcm = bool((read_adapter_config(adapters).get("adapter") or {}).get("bcm"))
    else:
        resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        if resolution % pipe.vae_scale_factor:
            raise InputError(f"--resolution: must be a multiple of {pipe.vae_scale_factor}, got {resolution}")
        bcm = pipe.adapter_config.bcm
    backgrounds = None
    if bcm:
        if config.backgrounds is None:
            raise InputError(
                "these adapters use BCM: give --backgrounds DIR (normal images, e.g. train/good)"
            )
        backgrounds = load_backgrounds(config.backgrounds, config.foreground, resolution)
    masker = build_masker(config.mask_method, config.u2net_weights, config.mask_threshold, device=device)

    record_config = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    record_config["adapter_identity"] = adapter_identity(adapters)
    record_config["anomaly_type"] = config.anomaly_type or adapter_anomaly_type(adapters)
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
    backgrounds: list[tuple[str, torch.Tensor]] | None,
    masker: PartMasker,
) -> None:
    """Make and write the pairs ``todo`` (indices), ``config.batch_size`` per pipeline call."""
    if pipe is None:
        pipe = DualAnoDiffPipeline.from_pretrained(
            config.base, torch_dtype=PRECISIONS[config.mixed_precision]
        )
        pipe.load_adapters(config.adapters)
        pipe.to(device)
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
            chosen = [backgrounds[(i // config.background_every) % len(backgrounds)] for i in indices]
            bg_names, bg_images = [c[0] for c in chosen], [c[1] for c in chosen]
        out = pipe(
            num_pairs=len(indices),
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            seeds=[writer.seed(i) for i in indices],
            backgrounds=torch.stack(bg_images) if bg_images else None,
            height=resolution,
            width=resolution,
            global_prompt=config.global_prompt,
            part_prompt=config.part_prompt,
            output_type="np",
        )
        for k, index in enumerate(indices):
            image, part = to_uint8(out.images[k]), to_uint8(out.parts[k])
            mask = masker(part)
            quality = judge_mask(mask, max_area_fraction=config.max_mask_area)
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
            )
        bar.update(len(indices))
        bar.set_postfix(pairs_per_s=f"{bar.n / (time.perf_counter() - started):.2f}")
    bar.close()
