"""The shipped demo base: SD 1.5's structure at a small width, with 16x16 latents for 64 px images.

Stable Diffusion 1.5 turns a 512 px image into a 64x64x4 latent (8x); a 64 px demo image through an 8x VAE
leaves 8x8 latents, too coarse for a 3-6 px defect. So the demo base keeps SD's UNet block layout (the same
16 transformer blocks and 32 attention layers, 4 levels) and its VAE block type, but its VAE has three
levels (4x): 16x16x4 latents, each latent pixel a 4x4 patch of image.

The weights live in ``dualanodiff/assets/demo_base.safetensors`` (fp16, keys ``unet.*``, ``vae.*`` and the
reference segmenters' ``segmenter.<category>.*``) with ``demo_base.json`` (the pretraining settings, the
VAE scaling factor, the segmenters' thresholds, run times). The text encoder is not shipped: it is the seeded
random one of ``build_base("tiny", seed)``, rebuilt from the recorded seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io import atomic_path, write_json_atomic
from ..model.base import SAMPLING_RECIPE, BaseComponents, build_base, save_base
from .config import sampling_recipe

ASSETS = Path(__file__).resolve().parents[1] / "assets"
WEIGHTS_NAME = "demo_base.safetensors"
META_NAME = "demo_base.json"
RESOLUTION = 64

DEMO_UNET_CONFIG = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 128, 128),
    cross_attention_dim=64,  # the tiny CLIP text encoder's width
    attention_head_dim=4,
    norm_num_groups=16,
    sample_size=RESOLUTION // 4,
)
DEMO_VAE_CONFIG = dict(
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 64),
    norm_num_groups=16,
    sample_size=RESOLUTION,
)


def build_demo_structure(seed: int = 0) -> BaseComponents:
    """The demo base's modules with fresh random weights; the text encoder is ``build_base("tiny", seed)``'s."""
    tiny = build_base("tiny", seed=seed, resolution=RESOLUTION)
    torch.manual_seed(seed)
    tiny.unet = UNet2DConditionModel(**DEMO_UNET_CONFIG)
    tiny.vae = AutoencoderKL(**DEMO_VAE_CONFIG)
    tiny.source = f"random:demo:seed={seed}"
    return tiny


def save_demo_base(
    base: BaseComponents,
    out_dir: str | os.PathLike,
    meta: dict,
    extra: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write the UNet, the VAE and the ``extra`` modules (keyed by prefix) as fp16 safetensors, and their meta."""
    out_dir = Path(out_dir)
    modules = {"unet": base.unet, "vae": base.vae, **(extra or {})}
    state = {
        f"{prefix}.{k}": v.detach().to(torch.float16).contiguous()
        for prefix, module in modules.items()
        for k, v in module.state_dict().items()
        if v.is_floating_point()
    }
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    meta = dict(meta, scaling_factor=float(base.vae.config.scaling_factor), structure="demo")
    write_json_atomic(out_dir / META_NAME, meta)
    return out_dir / WEIGHTS_NAME


def _folder(folder: str | os.PathLike | None) -> Path:
    folder = Path(folder) if folder is not None else ASSETS
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / META_NAME).is_file():
        raise InputError(
            f"demo base weights not found in {folder} (expected {WEIGHTS_NAME} and {META_NAME}); "
            "make them with `python scripts/pretrain_demo_base.py`"
        )
    return folder


def read_meta(folder: str | os.PathLike | None = None) -> dict:
    """``demo_base.json``: the pretraining settings, scaling factor, segmenter thresholds, times, losses."""
    return json.loads((_folder(folder) / META_NAME).read_text(encoding="utf-8"))


def load_weights(module: torch.nn.Module, prefix: str, folder: str | os.PathLike | None = None) -> None:
    """Load the ``prefix.*`` weights of the demo assets into ``module`` (fp32), strictly."""
    path = _folder(folder) / WEIGHTS_NAME
    state = load_file(str(path))
    sub = {k[len(prefix) + 1 :]: v.float() for k, v in state.items() if k.startswith(prefix + ".")}
    if not sub:
        raise InputError(f"{path}: holds no {prefix}.* weights; remake it with scripts/pretrain_demo_base.py")
    missing, unexpected = module.load_state_dict(sub, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise InputError(
            f"{path}: the {prefix} weights do not fit its structure "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def load_demo_base(folder: str | os.PathLike | None = None) -> BaseComponents:
    """The demo structure with the shipped (or ``folder``'s) weights in fp32, frozen.

    Deterministic: the same files give bit-identical modules on every call.
    """
    meta = read_meta(folder)
    base = build_demo_structure(seed=int(meta["config"]["seed"]))
    for name in ("unet", "vae"):
        module = getattr(base, name)
        load_weights(module, name, folder)
        module.eval().requires_grad_(False)
    base.vae.register_to_config(scaling_factor=float(meta["scaling_factor"]))
    base.source = f"dualanodiff-demo-base:{_folder(folder).name}"
    return base


def demo_base_folder(out_dir: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """Write the demo base as a complete diffusers folder (usable as ``--base DIR`` by every command)."""
    out_dir = Path(out_dir)
    if not ((out_dir / "unet" / "config.json").is_file() and (out_dir / "model_index.json").is_file()):
        save_base(load_demo_base(folder), out_dir)
    if not (out_dir / SAMPLING_RECIPE).is_file():  # also into a folder written before bases carried one
        write_json_atomic(out_dir / SAMPLING_RECIPE, sampling_recipe())
    return out_dir
