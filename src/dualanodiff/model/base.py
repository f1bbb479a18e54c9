"""The frozen base: Stable Diffusion 1.5 from a hub id or a local folder, or a small one built from configs.

Nothing here downloads at test time. `build_base("tiny")` makes a model with SD 1.5's *structure* (the same
block types, 16 transformer blocks, 32 attention layers, the same scheduler) at a small width, with a real CLIP
BPE tokenizer built from the vocabulary that ships inside the ``open_clip_torch`` wheel, so tests and the demo
exercise exactly the code paths real weights do. `build_base("sd15")` gives the real shapes with random weights,
for speed measurements.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..errors import InputError
from ..progress import apply_library_quiet

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# Stable Diffusion 1.5's scheduler (its `scheduler/scheduler_config.json`).
SD15_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,  # not a PNDM argument, but other schedulers built from this config read it (DDIM)
    prediction_type="epsilon",
)

_UNET_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    in_channels=4,
    out_channels=4,
)
_VAE_BLOCKS = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
)

# Real SD 1.5 shapes (unet/vae/text_encoder config.json of the hub model).
SD15_UNET_CONFIG = dict(
    _UNET_BLOCKS,
    sample_size=64,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE_CONFIG = dict(
    _VAE_BLOCKS, block_out_channels=(128, 256, 512, 512), sample_size=512, norm_num_groups=32
)
SD15_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)

# The tiny base: SD 1.5's structure at a small width (the same 32 attention layers, 4 UNet levels, 8x VAE).
TINY_UNET_CONFIG = dict(
    _UNET_BLOCKS,
    block_out_channels=(32, 64, 64, 64),
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=16,
)
TINY_VAE_CONFIG = dict(_VAE_BLOCKS, block_out_channels=(16, 32, 32, 32), norm_num_groups=8)
TINY_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)


@dataclass
class BaseComponents:
    """The frozen parts of a Stable Diffusion model, where they came from, and the fingerprint of their
    weights (:func:`weights_fingerprint`, taken in full precision before any cast)."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler: PNDMScheduler
    source: str
    weights_fingerprint: str | None = None


def _open_clip_bpe_path() -> Path:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise InputError(f"the CLIP BPE vocabulary is missing from the open_clip_torch install ({path})")
    return path


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP tokenizer's vocab.json and merges.txt, rebuilt exactly as OpenAI's SimpleTokenizer builds them.

    Written here because no installed package ships the Hugging Face files; open_clip ships the BPE merges.
    """
    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = _bytes_to_unicode()
    tokens = list(byte_chars) + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _bytes_to_unicode() -> list[str]:
    # OpenAI CLIP's byte-to-unicode table, in its order.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: str | os.PathLike) -> CLIPTokenizer:
    """Write a real CLIP BPE tokenizer (model_max_length 77) to ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}
        ),
        encoding="utf-8",
    )
    # Loading from the files (not the constructor, whose arguments changed in transformers 5) works on 4.x and 5.x.
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_base(
    preset: str = "tiny", seed: int = 0, resolution: int | None = None, device: str | torch.device = "cpu"
) -> BaseComponents:
    """Build a base with random weights: ``tiny`` (tests, demo) or ``sd15`` (real shapes, for benchmarks).

    ``device``: where the weights are created and initialised (``"cuda"`` builds SD 1.5 in a second instead of
    a minute of CPU initialisation and a copy); the seed gives the same weights on a given device.
    """
    if preset not in ("tiny", "sd15"):
        raise InputError(f"unknown base preset {preset!r}: use 'tiny' or 'sd15'")
    unet_cfg, vae_cfg, text_cfg = (
        (TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG)
        if preset == "tiny"
        else (SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_CONFIG)
    )
    resolution = resolution or (64 if preset == "tiny" else 512)
    if resolution % 8:
        raise InputError(f"--resolution must be a multiple of 8, got {resolution}")
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**{**unet_cfg, "sample_size": resolution // 8})
        vae = AutoencoderKL(**{**vae_cfg, "sample_size": resolution})
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(tmp)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    return BaseComponents(
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        source=f"random:{preset}:seed={seed}",
        weights_fingerprint=weights_fingerprint(unet, text_encoder, vae),
    )


# A base folder may carry the sampling and mask settings its adapters are sampled with (the demo base does:
# its 16x16 latents need other settings than SD 1.5's, docs/demo.md). `train` records them in the adapters and
# `generate --preset adapters` (the default) uses them; SD 1.5 folders carry none, so the paper's preset applies.
SAMPLING_RECIPE = "dualanodiff_sampling.json"
RECIPE_FIELDS = ("scheduler", "steps", "guidance", "zero_mean_noise", "shared_initial_noise", "mask_method")


def read_sampling_recipe(base: str | os.PathLike) -> dict | None:
    """The sampling recipe of a local base folder (only the `RECIPE_FIELDS`), or None when it carries none."""
    path = Path(base) / SAMPLING_RECIPE
    if not path.is_file():
        return None
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(recipe, dict):
        raise InputError(f"{path}: expected a JSON object of sampling settings")
    return {k: recipe[k] for k in RECIPE_FIELDS if k in recipe}


def save_base(components: BaseComponents, out_dir: str | os.PathLike) -> Path:
    """Save as a complete diffusers Stable Diffusion folder (loadable by `StableDiffusionPipeline`)."""
    from diffusers import StableDiffusionPipeline

    apply_library_quiet()
    out_dir = Path(out_dir)
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_base(
    base: str | os.PathLike, torch_dtype: torch.dtype | None = None, local_files_only: bool | None = None
) -> BaseComponents:
    """Load the frozen base from a local diffusers folder or a hub id (cached, or downloaded when online).

    The weights are read in full precision, fingerprinted (:func:`weights_fingerprint`), then cast to
    ``torch_dtype``: the fingerprint is the same whatever precision a command runs in.
    """
    apply_library_quiet()
    base = str(base)
    is_dir = Path(base).is_dir()
    if not is_dir and (base.startswith((".", "/", "~")) or os.sep in base and Path(base).parent.exists()):
        if not Path(base).expanduser().is_dir():
            raise InputError(f"base model folder not found: {base}")
    if is_dir:
        check_base_folder(base)
    kwargs = {"local_files_only": local_files_only} if local_files_only is not None else {}
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kwargs)
        scheduler = PNDMScheduler.from_pretrained(base, subfolder="scheduler", **kwargs)
    except (OSError, ValueError) as err:
        detail = f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        if is_dir:  # every file is there (checked above): one of them cannot be read
            raise InputError(f"could not load the base model folder {base}: {detail}") from err
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = (
            "HF_HUB_OFFLINE is set and the model is not in the local cache"
            if offline
            else "it could not be found or downloaded"
        )
        raise InputError(
            f"could not load the base model {base!r}: {hint}. Pass a local diffusers folder instead "
            f"(e.g. `huggingface-cli download {SD15_HUB_ID} --local-dir sd15` on a machine with internet, "
            "then `--base sd15`), or try the tool without weights with `dualanodiff make-tiny-base --out tiny`. "
            + detail
        ) from err
    fingerprint = weights_fingerprint(unet, text_encoder, vae)
    if torch_dtype is not None:
        for module in (unet, vae, text_encoder):
            module.to(torch_dtype)
    return BaseComponents(vae, text_encoder, tokenizer, unet, scheduler, base, fingerprint)


# What a diffusers Stable Diffusion folder must hold: (subfolder, config file, weight file stems).
_BASE_FILES = (
    ("unet", "config.json", ("diffusion_pytorch_model",)),
    ("vae", "config.json", ("diffusion_pytorch_model",)),
    ("text_encoder", "config.json", ("model", "pytorch_model")),
    ("tokenizer", "tokenizer_config.json", ()),
    ("scheduler", "scheduler_config.json", ()),
)


def check_base_folder(folder: str | os.PathLike) -> None:
    """InputError naming every file a local base folder lacks (an empty ``unet/``, a missing config),
    before diffusers tries the hub cache and blames being offline."""
    folder = Path(folder)
    missing = []
    for sub, config, stems in _BASE_FILES:
        d = folder / sub
        if not d.is_dir():
            missing.append(f"{d}/")
            continue
        if not (d / config).is_file():
            missing.append(str(d / config))
        weights = [
            p for p in d.iterdir() if p.suffix in (".safetensors", ".bin") and p.name.startswith(stems)
        ]
        if stems and not weights:
            missing.append(f"{d / stems[0]}.safetensors")
    hint = (
        "give a folder written by `save_pretrained`, or make one with `dualanodiff make-tiny-base --out DIR`"
    )
    if len(missing) == len(_BASE_FILES) and all(m.endswith("/") for m in missing):
        raise InputError(
            f"{folder} is not a diffusers Stable Diffusion folder (no {', '.join(s for s, _, _ in _BASE_FILES)} "
            f"subfolders); {hint}"
        )
    if missing:
        raise InputError(
            f"{folder} is an incomplete diffusers Stable Diffusion folder: missing {', '.join(missing)}; {hint}"
        )


@dataclass(frozen=True)
class BaseShape:
    """What a base's configs say about sizes, read without loading a weight (so options are checked
    against it before any model loads)."""

    vae_factor: int  # pixels per latent cell (8 for SD 1.5): image sides must be multiples of it
    native_resolution: int  # the image side the UNet was made for (512 for SD 1.5)
    max_lora_rank: int  # the widest UNet attention projection: a LoRA rank above it is already full rank
    max_text_lora_rank: int  # the text encoder's width, the same bound for its LoRA


def read_base_shape(base: str | os.PathLike) -> BaseShape:
    """The :class:`BaseShape` of a local folder or a (cached) hub id; the same InputError as `load_base`
    when it cannot be found."""
    from transformers import CLIPTextConfig

    base = str(base)
    if Path(base).is_dir():
        check_base_folder(base)
    try:
        unet = UNet2DConditionModel.load_config(base, subfolder="unet")
        vae = AutoencoderKL.load_config(base, subfolder="vae")
        text = CLIPTextConfig.from_pretrained(base, subfolder="text_encoder")
    except (OSError, ValueError):
        load_base(base)  # raises the InputError that explains how to get the base
        raise
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return BaseShape(
        vae_factor=factor,
        native_resolution=int(unet["sample_size"]) * factor,
        max_lora_rank=int(max(unet["block_out_channels"])),
        max_text_lora_rank=int(text.hidden_size),
    )


def check_resolution(resolution: int | None, shape: BaseShape, name: str = "--resolution") -> int:
    """``resolution`` (None: the native size) checked to be a multiple of the VAE factor."""
    if resolution is None:
        return shape.native_resolution
    if resolution % shape.vae_factor:
        raise InputError(
            f"{name}: must be a multiple of {shape.vae_factor} (the VAE's downsampling factor), got {resolution}; "
            f"nearest: {max(shape.vae_factor, round(resolution / shape.vae_factor) * shape.vae_factor)}"
        )
    return resolution


_SAMPLES_PER_TENSOR = 16


def weights_fingerprint(*modules: torch.nn.Module) -> str:
    """A short hash of the weights of ``modules`` (the base's UNet, text encoder and VAE), so adapters are
    refused on a base of the same architecture but other weights.

    Every tensor contributes its shape and 16 elements spread evenly over it, as float32, in parameter
    order (names are left out: transformers 4 and 5 name the text encoder's tensors differently). That
    is a few hundred kB for SD 1.5, milliseconds to hash, and any fine-tune that moves the weights changes
    it; a change confined to unsampled elements would not. Take it in full precision: cast weights hash
    differently (`load_base` fingerprints before casting).
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for module in modules:
            for tensor in module.state_dict().values():
                if tensor.is_meta or not tensor.is_floating_point():
                    continue
                flat = tensor.detach().reshape(-1)
                picks = torch.linspace(0, flat.numel() - 1, min(flat.numel(), _SAMPLES_PER_TENSOR)).long()
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(flat[picks.to(flat.device)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def unet_fingerprint(unet: UNet2DConditionModel) -> str:
    """A short hash of the UNet's architecture, so adapters are not loaded into a base of another shape."""
    keys = ("block_out_channels", "cross_attention_dim", "attention_head_dim", "layers_per_block")
    keys += ("down_block_types", "up_block_types", "in_channels")
    desc = json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in unet.config.items() if k in keys}
    )
    return hashlib.sha256(desc.encode()).hexdigest()[:16]
