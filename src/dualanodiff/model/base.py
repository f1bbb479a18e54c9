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
    """The frozen parts of a Stable Diffusion model, plus where they came from."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler: PNDMScheduler
    source: str


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
        vae, text_encoder, tokenizer, unet, scheduler, source=f"random:{preset}:seed={seed}"
    )


def save_base(components: BaseComponents, out_dir: str | os.PathLike) -> Path:
    """Save as a complete diffusers Stable Diffusion folder (loadable by `StableDiffusionPipeline`)."""
    from diffusers import StableDiffusionPipeline

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
    """Load the frozen base from a local diffusers folder or a hub id (cached, or downloaded when online)."""
    base = str(base)
    is_dir = Path(base).is_dir()
    if not is_dir and (base.startswith((".", "/", "~")) or os.sep in base and Path(base).parent.exists()):
        if not Path(base).expanduser().is_dir():
            raise InputError(f"base model folder not found: {base}")
    if is_dir and not (Path(base) / "unet").is_dir():
        raise InputError(
            f"{base} is not a diffusers Stable Diffusion folder (no unet/ subfolder); "
            "give a folder written by `save_pretrained`, or `dualanodiff make-tiny-base --out DIR`"
        )
    kwargs = dict(torch_dtype=torch_dtype) if torch_dtype is not None else {}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(
            base, subfolder="tokenizer", **{k: v for k, v in kwargs.items() if k != "torch_dtype"}
        )
        scheduler = PNDMScheduler.from_pretrained(
            base, subfolder="scheduler", **{k: v for k, v in kwargs.items() if k != "torch_dtype"}
        )
    except (OSError, ValueError) as err:
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
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    return BaseComponents(vae, text_encoder, tokenizer, unet, scheduler, source=base)


def unet_fingerprint(unet: UNet2DConditionModel) -> str:
    """A short hash of the UNet's architecture, so adapters are not loaded into a base of another shape."""
    keys = ("block_out_channels", "cross_attention_dim", "attention_head_dim", "layers_per_block")
    keys += ("down_block_types", "up_block_types", "in_channels")
    desc = json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in unet.config.items() if k in keys}
    )
    return hashlib.sha256(desc.encode()).hexdigest()[:16]
