"""The shipped demo base: ``build_base("tiny")``'s structure with the UNet and VAE weights of `pretrain`.

The weights live in ``dualanodiff/assets/demo_base.safetensors`` (fp16, keys ``unet.*`` and ``vae.*``) with
``demo_base.json`` (the pretraining settings, the VAE scaling factor, run times). The text encoder is not
shipped: it is the seeded random one of ``build_base("tiny", seed)``, rebuilt from the recorded seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import InputError
from .io import atomic_path, write_json_atomic
from .model.base import BaseComponents, build_base, save_base

ASSETS = Path(__file__).parent / "assets"
WEIGHTS_NAME = "demo_base.safetensors"
META_NAME = "demo_base.json"


def save_demo_base(base: BaseComponents, out_dir: str | os.PathLike, meta: dict) -> Path:
    """Write the UNet and VAE weights as fp16 safetensors plus their metadata."""
    out_dir = Path(out_dir)
    state = {
        f"unet.{k}": v.detach().to(torch.float16).contiguous() for k, v in base.unet.state_dict().items()
    }
    state.update(
        {f"vae.{k}": v.detach().to(torch.float16).contiguous() for k, v in base.vae.state_dict().items()}
    )
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    meta = dict(meta, scaling_factor=float(base.vae.config.scaling_factor), structure="tiny")
    write_json_atomic(out_dir / META_NAME, meta)
    return out_dir / WEIGHTS_NAME


def load_demo_base(folder: str | os.PathLike | None = None) -> BaseComponents:
    """Build the tiny structure, load the shipped (or ``folder``'s) weights in fp32, rebuild the text encoder.

    Deterministic: the same files give bit-identical modules on every call.
    """
    folder = Path(folder) if folder is not None else ASSETS
    weights, meta_path = folder / WEIGHTS_NAME, folder / META_NAME
    if not weights.is_file() or not meta_path.is_file():
        raise InputError(
            f"demo base weights not found in {folder} (expected {WEIGHTS_NAME} and {META_NAME}); "
            "make them with `python scripts/pretrain_demo_base.py`"
        )
    meta = json.loads(meta_path.read_text())
    cfg = meta["config"]
    base = build_base("tiny", seed=int(cfg["seed"]), resolution=int(cfg["resolution"]))
    state = load_file(str(weights))
    for name, module in (("unet", base.unet), ("vae", base.vae)):
        sub = {k[len(name) + 1 :]: v.float() for k, v in state.items() if k.startswith(name + ".")}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise InputError(
                f"{weights}: the {name} weights do not fit the tiny structure "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        module.eval().requires_grad_(False)
    base.vae.register_to_config(scaling_factor=float(meta["scaling_factor"]))
    base.source = f"dualanodiff-demo-base:{folder.name}"
    return base


def demo_base_folder(out_dir: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """Write the demo base as a complete diffusers folder (usable as ``--base DIR`` by every command)."""
    out_dir = Path(out_dir)
    if (out_dir / "unet" / "config.json").is_file() and (out_dir / "model_index.json").is_file():
        return out_dir
    return save_base(load_demo_base(folder), out_dir)
