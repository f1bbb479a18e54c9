"""`DualAnoDiffPipeline`: Stable Diffusion 1.5 with the dual-branch adapters, in the diffusers style.

    pipe = DualAnoDiffPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.load_adapters("adapters/hazelnut_crack")
    pairs = pipe(num_pairs=8, generator=torch.Generator().manual_seed(0))

``pipe.unet`` is the base UNet with the dual processors installed: calling it on an interleaved pair batch
``[global_0, part_0, global_1, part_1, ...]`` runs the dual forward.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from .model.base import load_base
from .model.dual_unet import (
    AdapterConfig,
    add_text_encoder_lora,
    check_adapter_base,
    convert_official_state_dict,
    install_dual_processors,
    load_adapter_state,
    load_adapter_weights,
    read_adapter_config,
    read_state_dict_file,
    save_adapters,
)


def _remove_peft_lora(model: nn.Module) -> None:
    """Undo `inject_adapter_in_model`: put each LoRA-wrapped layer's original layer back."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base_layer)
    if hasattr(model, "peft_config"):
        del model.peft_config


class DualAnoDiffPipeline(DiffusionPipeline):
    """A Stable Diffusion pipeline whose UNet denoises (whole image, anomaly part) pairs jointly."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.adapter_config: AdapterConfig | None = None
        self.base_source = ""

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike,
        rank: int = 32,
        bcm: bool = False,
        saim: bool = True,
        saim_zero_init: bool = False,
        text_encoder_rank: int = 32,
        alpha: float | None = None,
        background_latent_scaling: str = "correct",
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
    ) -> DualAnoDiffPipeline:
        """Load the frozen base (hub id or local folder) and install fresh adapters with these options."""
        components = load_base(base, torch_dtype=torch_dtype, local_files_only=local_files_only)
        config = AdapterConfig(
            rank=rank,
            alpha=alpha,
            saim=saim,
            saim_zero_init=saim_zero_init,
            bcm=bcm,
            text_encoder_rank=text_encoder_rank,
            background_latent_scaling=background_latent_scaling,
        )
        return cls.from_components(components, config)

    @classmethod
    def from_components(cls, components, config: AdapterConfig | None = None) -> DualAnoDiffPipeline:
        """Build from already-loaded base components (see `dualanodiff.model.base`)."""
        for module in (components.vae, components.text_encoder, components.unet):
            module.requires_grad_(False)
        pipe = cls(
            components.vae,
            components.text_encoder,
            components.tokenizer,
            components.unet,
            components.scheduler,
        )
        pipe.base_source = components.source
        pipe.configure_adapters(config or AdapterConfig())
        return pipe

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

    # ---- adapters on disk -----------------------------------------------------------------------------
    def save_adapters(self, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
        """Save adapters as ``adapters.safetensors`` + ``adapter_config.json`` (options and base identity)."""
        return save_adapters(
            out_dir, self.unet, self.text_encoder, self.adapter_config, self.base_source, extra
        )

    def load_adapters(self, adapter_dir: str | os.PathLike) -> dict:
        """Load adapters saved by `save_adapters` (re-installing with their options); returns their metadata."""
        meta = read_adapter_config(adapter_dir)
        check_adapter_base(meta, self.unet, adapter_dir)
        state = load_adapter_weights(adapter_dir)
        self.configure_adapters(AdapterConfig.from_dict(meta.get("adapter", {})))
        load_adapter_state(state, self.unet, self.text_encoder, source=str(Path(adapter_dir)))
        return meta

    def load_official_checkpoint(self, path: str | os.PathLike) -> AdapterConfig:
        """Import the authors' released adapters (one fp32 state dict per anomaly type, METHOD section 10)."""
        converted, config = convert_official_state_dict(read_state_dict_file(path))
        self.configure_adapters(config)
        load_adapter_state(converted, self.unet, self.text_encoder, source=str(path))
        return config
