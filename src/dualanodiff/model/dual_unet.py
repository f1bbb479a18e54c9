"""Install the dual-branch adapters on a diffusers UNet (and a LoRA on the text encoder); save and load them.

The UNet stays an unmodified `UNet2DConditionModel`: every attention layer gets a `DualBranchAttnProcessor`,
which diffusers registers as a submodule, so adapter parameters live at
``<attention path>.processor.<param>``, the same paths the official checkpoints use (`official.py` maps
their key names to ours).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError
from ..io import atomic_path, write_json_atomic
from .base import unet_fingerprint
from .processor import DualBranchAttnProcessor

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FEWSHOT_MASKS = "fewshot_masks"  # the adapters' copy of their training masks (`generate --where auto` shapes)
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Precisions adapters may be saved in (`save_adapters(dtype=...)`); loading casts to the model's precision.
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class AdapterConfig:
    """What is installed on the base. Saved next to the weights so they can be loaded without guessing."""

    rank: int = 32
    alpha: float | None = None  # None: alpha = rank, i.e. LoRA scale exactly 1.0 (METHOD 3)
    saim: bool = True
    saim_zero_init: bool = False  # True: SAIM starts as the identity; False: PyTorch default init (official)
    bcm: bool = False
    text_encoder_rank: int = 32  # 0: no text-encoder LoRA
    # "correct": background latent multiplied by the VAE scaling factor; "official": the authors' omission.
    background_latent_scaling: str = "correct"

    def __post_init__(self):
        if self.rank < 1:
            raise InputError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.background_latent_scaling not in ("correct", "official"):
            raise InputError(
                f"background_latent_scaling must be 'correct' or 'official', got {self.background_latent_scaling!r}"
            )

    @classmethod
    def from_dict(cls, data: dict) -> AdapterConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def install_dual_processors(
    unet: UNet2DConditionModel, config: AdapterConfig
) -> dict[str, DualBranchAttnProcessor]:
    """Give every attention layer of ``unet`` a fresh dual-branch processor (fp32, on the UNet's device)."""
    device = unet.device
    processors = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        processors[name] = DualBranchAttnProcessor(
            name=name,
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features if attn.is_cross_attention else None,
            rank=config.rank,
            alpha=config.alpha,
            saim=config.saim,
            saim_zero_init=config.saim_zero_init,
            bcm=config.bcm,
        ).to(device=device if device.type != "meta" else "meta")
    unet.set_attn_processor(processors)
    return processors


def dual_processors(unet: UNet2DConditionModel) -> dict[str, DualBranchAttnProcessor]:
    procs = {n: p for n, p in unet.attn_processors.items() if isinstance(p, DualBranchAttnProcessor)}
    if not procs:
        raise InputError("this UNet has no dual-branch processors; call install_dual_processors first")
    return procs


def add_text_encoder_lora(text_encoder: nn.Module, rank: int) -> None:
    """A rank-r LoRA (scale 1.0) on the q/k/v/out projections of every CLIP layer, through peft."""
    if rank > 0:
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_LORA_TARGETS, init_lora_weights=True)
        inject_adapter_in_model(config, text_encoder)


def unet_adapter_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name, proc in dual_processors(unet).items()
        for key, value in proc.state_dict().items()
    }


def adapter_state_dict(unet: UNet2DConditionModel, text_encoder: nn.Module | None) -> dict[str, torch.Tensor]:
    """All trained tensors: ``unet.<processor path>.<param>`` and ``text_encoder.<peft key>``."""
    state = {f"unet.{k}": v for k, v in unet_adapter_state_dict(unet).items()}
    if text_encoder is not None and _has_text_lora(text_encoder):
        state.update({f"text_encoder.{k}": v for k, v in _text_lora_state(text_encoder).items()})
    return state


def _has_text_lora(text_encoder: nn.Module) -> bool:
    return any("lora_A" in n for n, _ in text_encoder.named_parameters())


# Files use the canonical CLIP path `text_model.encoder...` (transformers 4 and the official checkpoints);
# transformers 5 names the same parameters `encoder...`. These two map between the file and the live model.
def _text_lora_state(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    state = get_peft_model_state_dict(text_encoder)
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}


def _set_text_lora_state(text_encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    live_prefixed = any(n.startswith("text_model.") for n, _ in text_encoder.named_parameters())
    if not live_prefixed:
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    set_peft_model_state_dict(text_encoder, state)


def save_adapters(
    out_dir: str | os.PathLike,
    unet: UNet2DConditionModel,
    text_encoder: nn.Module | None,
    config: AdapterConfig,
    base: str,
    extra: dict | None = None,
    dtype: str = "fp32",
    base_fingerprint: str | None = None,
) -> Path:
    """Write ``adapters.safetensors`` and ``adapter_config.json`` (config, base identity: its source, the
    architecture of its UNet and the fingerprint of its weights), atomically. Refuses non-finite values.

    ``dtype``: fp32 (exact), or bf16 / fp16 (half the size: at SD 1.5 scale 281 MB instead of 562 MB, mostly
    SAIM); the loader casts to the model's precision whatever was saved.
    """
    if dtype not in SAVE_DTYPES:
        raise InputError(f"save dtype must be one of {', '.join(SAVE_DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    full = {k: v.detach().to("cpu", torch.float32) for k, v in adapter_state_dict(unet, text_encoder).items()}
    check_finite(full, f"the adapters to be saved in {out_dir}")
    state = {}
    for key, value in full.items():
        saved = value.to(SAVE_DTYPES[dtype]).contiguous()
        if not torch.isfinite(saved).all():  # finite in fp32 (checked above), beyond fp16's range
            raise InputError(f"{key} holds values beyond {dtype}'s range: save the adapters as bf16 or fp32")
        state[key] = saved
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / ADAPTER_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "dualanodiff", "dtype": dtype})
    meta = {
        "adapter": config.to_dict(),
        "saved_dtype": dtype,
        "base": {
            "source": base,
            "unet_fingerprint": unet_fingerprint(unet),
            "weights_fingerprint": base_fingerprint,
        },
        **(extra or {}),
    }
    write_json_atomic(out_dir / ADAPTER_CONFIG, meta)
    return out_dir


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    adapter_dir = Path(adapter_dir)
    cfg_path, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for path in (adapter_dir, cfg_path, weights):
        if not path.exists():
            raise InputError(
                f"adapters not found: {path} does not exist (expected {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG})"
            )
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{cfg_path} is not valid JSON: {err}") from err


def load_adapter_weights(adapter_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path} is not a readable safetensors file: {err}") from err


def check_adapter_base(
    meta: dict,
    unet: UNet2DConditionModel,
    adapter_dir: str | os.PathLike,
    base_fingerprint: str | None = None,
) -> None:
    """Refuse adapters trained for a base of another architecture, or of the same architecture with other
    weights (when both fingerprints are known: adapters saved before fingerprints existed pass)."""
    base = meta.get("base", {})
    saved = base.get("unet_fingerprint")
    if saved is not None and saved != unet_fingerprint(unet):
        raise InputError(
            f"the adapters in {adapter_dir} were trained for another base ({base.get('source')}, "
            f"UNet {saved}); the base loaded now has UNet {unet_fingerprint(unet)}. Load the base they were trained on."
        )
    saved = base.get("weights_fingerprint")
    if saved is not None and base_fingerprint is not None and saved != base_fingerprint:
        raise InputError(
            f"the adapters in {adapter_dir} were trained on other base weights ({base.get('source')}, weights "
            f"{saved}); the base loaded now has the same architecture but weights {base_fingerprint}. Load the "
            "base they were trained on."
        )


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """InputError when any tensor of ``state`` holds NaN or infinity (a diverged training run)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(
            f"{what}: {len(bad)} of {len(state)} tensors hold NaN or infinite values (e.g. {bad[0]}); the "
            "training that made them diverged (a learning rate too high?)"
        )


def load_adapter_state(
    state: dict[str, torch.Tensor], unet: UNet2DConditionModel, text_encoder: nn.Module | None, source: str
) -> None:
    """Copy ``state`` into the installed adapters; every key must exist and fit, and none may be missing.

    Values are cast to the installed adapters' precision (``load_state_dict`` copies), so adapters saved as
    fp32, bf16 or fp16 load into a model of any precision.
    """
    procs = dual_processors(unet)
    expected = {f"unet.{k}": v for k, v in unet_adapter_state_dict(unet).items()}
    text_expected = {}
    if text_encoder is not None and _has_text_lora(text_encoder):
        text_expected = {f"text_encoder.{k}": v for k, v in _text_lora_state(text_encoder).items()}
    _check_keys_and_shapes(state, {**expected, **text_expected}, source)
    check_finite(state, source)
    for name, proc in procs.items():
        prefix = f"unet.{name}."
        proc.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    if text_expected:
        text_state = {
            k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")
        }
        _set_text_lora_state(text_encoder, text_state)


def _check_keys_and_shapes(state: dict, expected: dict, source: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in this model"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensors do not fit this base (e.g. {wrong[0]})")
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if problems:
        raise InputError(f"{source} does not match this model: " + "; ".join(problems))
