"""Adapter installation and I/O for the DualAnoDiff pipelines, as a loader mixin.

diffusers keeps LoRA I/O out of its pipelines (``LoraLoaderMixin``); this mixin does the same for the
dual-branch adapters: the per-branch LoRA and SAIM (and BCM) processors installed in the UNet, the text
encoder's LoRA, their safetensors files, and the authors' checkpoint format. A class using it has ``unet``,
``text_encoder``, ``base_source`` and ``base_fingerprint``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..model.dual_unet import (
    AdapterConfig,
    adapter_state_dict,
    add_text_encoder_lora,
    check_adapter_base,
    install_dual_processors,
    load_adapter_state,
    load_adapter_weights,
    read_adapter_config,
    save_adapters,
)
from ..model.official import convert_official_state_dict, read_state_dict_file, save_official_checkpoint
from ..model.processor import DualBranchAttnProcessor


def _remove_peft_lora(model: nn.Module) -> None:
    """Undo `inject_adapter_in_model`: put each LoRA-wrapped layer's original layer back."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base_layer)
    if hasattr(model, "peft_config"):
        del model.peft_config


class DualAnoDiffLoaderMixin:
    """Install, save and load the dual-branch adapters (ours as safetensors, the authors' as their .bin)."""

    adapter_config: AdapterConfig | None
    base_source: str
    base_fingerprint: str | None

    def configure_adapters(self, config: AdapterConfig) -> None:
        """(Re)install fresh adapters with ``config``, replacing any installed before."""
        install_dual_processors(self.unet, config)
        _remove_peft_lora(self.text_encoder)
        add_text_encoder_lora(self.text_encoder, config.text_encoder_rank)
        dtype = self.unet.dtype
        if dtype != torch.float32:  # inference in half precision: adapters follow the base
            self.adapter_modules().to(dtype)
        self.adapter_config = config

    def adapter_modules(self) -> nn.ModuleList:
        """The trainable modules: every dual processor, plus the text-encoder LoRA layers."""
        modules = [p for p in self.unet.attn_processors.values() if isinstance(p, nn.Module)]
        modules += [
            m for m in self.text_encoder.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")
        ]
        return nn.ModuleList(modules)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Parameters that training updates: processors' tensors and the text LoRA's A/B matrices."""
        params = [p for p in self.unet.parameters() if p.requires_grad]
        params += [p for n, p in self.text_encoder.named_parameters() if "lora_" in n]
        return params

    def save_adapters(
        self, out_dir: str | os.PathLike, extra: dict | None = None, dtype: str = "fp32"
    ) -> Path:
        """Save adapters as ``adapters.safetensors`` + ``adapter_config.json`` (options and base identity).

        ``dtype``: "fp32" (default, exact), "bf16" or "fp16" (half the file; `load_adapters` reads any of them).
        """
        return save_adapters(
            out_dir,
            self.unet,
            self.text_encoder,
            self.adapter_config,
            self.base_source,
            extra,
            dtype=dtype,
            base_fingerprint=self.base_fingerprint,
        )

    def load_adapters(self, adapter_dir: str | os.PathLike) -> dict:
        """Load adapters saved by `save_adapters` (re-installing with their options); returns their metadata."""
        meta = read_adapter_config(adapter_dir)
        check_adapter_base(meta, self.unet, adapter_dir, self.base_fingerprint)
        state = load_adapter_weights(adapter_dir)
        self.configure_adapters(AdapterConfig.from_dict(meta.get("adapter", {})))
        load_adapter_state(state, self.unet, self.text_encoder, source=str(Path(adapter_dir)))
        return meta

    def load_official_checkpoint(self, path: str | os.PathLike) -> AdapterConfig:
        """Import the authors' released adapters (one fp32 state dict per anomaly type, METHOD section 10):
        the file, or the directory holding their ``pytorch_lora_weights.bin``, with or without BCM."""
        converted, config = convert_official_state_dict(read_state_dict_file(path))
        self.configure_adapters(config)
        load_adapter_state(converted, self.unet, self.text_encoder, source=str(path))
        return config

    def save_official_checkpoint(self, out_dir: str | os.PathLike, safe_serialization: bool = False) -> Path:
        """Write the adapters in the authors' layout, ``out_dir/pytorch_lora_weights.bin`` (``.safetensors``
        with ``safe_serialization``), the directory their inference script loads with ``load_lora_weights``.

        Their code knows neither a background scaling switch nor a LoRA alpha: BCM adapters trained with the
        correct background scaling behave differently there (see `AdapterConfig.background_latent_scaling`),
        and an alpha other than the rank is folded into the up-projections.
        """
        if self.adapter_config is None:
            raise InputError("no adapters installed: nothing to export")
        config = self.adapter_config
        if config.bcm and config.background_latent_scaling == "correct":
            warnings.warn(
                "these BCM adapters were trained with the background latent scaled by the VAE factor; the "
                "authors' code omits that factor, so in their inference the backgrounds will not match training",
                UserWarning,
                stacklevel=2,
            )
        scale = (config.alpha if config.alpha is not None else config.rank) / config.rank
        state = adapter_state_dict(self.unet, self.text_encoder)
        return save_official_checkpoint(
            state, out_dir, unet_lora_scale=scale, safe_serialization=safe_serialization
        )

    def merge_adapters(self, merge: bool) -> None:
        """Fold each branch's LoRA into its own copy of the attention projections (``merge=False`` undoes
        it): one matmul per projection and branch instead of three while sampling."""
        for name, proc in self.unet.attn_processors.items():
            if not isinstance(proc, DualBranchAttnProcessor):  # e.g. the benchmarks' loop reference
                continue
            if merge:
                proc.merge_lora(self.unet.get_submodule(name.removesuffix(".processor")))
            else:
                proc.unmerge_lora()
