"""`DualAnoDiffPipeline`: Stable Diffusion 1.5 with the dual-branch adapters, in the diffusers style.

    pipe = DualAnoDiffPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.load_adapters("adapters/hazelnut_crack")
    pairs = pipe(num_pairs=8, generator=torch.Generator().manual_seed(0))

``pipe.unet`` is the base UNet with the dual processors installed: calling it on an interleaved pair batch
``[global_0, part_0, global_1, part_1, ...]`` runs the dual forward.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from .errors import InputError
from .model.base import load_base
from .model.dual_unet import (
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
from .model.encode import GLOBAL_PROMPT, PART_PROMPT, decode_latents, encode_latents, encode_prompts
from .model.official import convert_official_state_dict, read_state_dict_file, save_official_checkpoint
from .model.processor import DualBranchAttnProcessor


def _remove_peft_lora(model: nn.Module) -> None:
    """Undo `inject_adapter_in_model`: put each LoRA-wrapped layer's original layer back."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base_layer)
    if hasattr(model, "peft_config"):
        del model.peft_config


# How the two background rows of a pair are noised under guidance (see `DualAnoDiffPipeline.__call__`).
BACKGROUND_NOISE = ("shared", "independent")


@dataclass
class DualAnoDiffOutput(BaseOutput):
    """Generated pairs: whole anomaly images, anomaly-part images, masks (when a masker is given), seeds."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    parts: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    masks: list[np.ndarray] | None
    seeds: list[int]


ZERO_MEAN_NOISE = (False, True, "part")  # `DualAnoDiffPipeline.__call__`'s choices


def centred_noise(noise: torch.Tensor) -> torch.Tensor:
    """Noise maps (..., h, w) with each map's mean removed and its std set to 1."""
    return (noise - noise.mean((-2, -1), keepdim=True)) / noise.std((-2, -1), keepdim=True)


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
        self.base_fingerprint: str | None = None  # weights_fingerprint of the base; None: unknown

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
        pipe.base_fingerprint = components.weights_fingerprint
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

    # ---- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        num_pairs: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.5,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        seeds: Sequence[int] | None = None,
        latents: torch.Tensor | None = None,
        backgrounds: torch.Tensor | Sequence[PIL.Image.Image | np.ndarray] | None = None,
        height: int | None = None,
        width: int | None = None,
        global_prompt: str = GLOBAL_PROMPT,
        part_prompt: str = PART_PROMPT,
        negative_prompt: str = "",
        output_type: str = "pil",
        masker: Callable[[np.ndarray], np.ndarray] | None = None,
        return_dict: bool = True,
        bcm_mode: str = "folded",
        merge_lora: bool = True,
        background_noise: str = "shared",
        zero_mean_noise: bool | str = False,
        shared_initial_noise: bool = False,
    ) -> DualAnoDiffOutput | tuple:
        """Generate ``num_pairs`` (whole image, anomaly part) pairs, and masks when ``masker`` is given.

        Reproducibility: pair i draws its initial noise (and, with BCM, its background noise) from its own seed
        (``seeds[i]``, or one drawn from ``generator``, or ``generator[i]``), so a pair is the same whatever the
        batch it is generated in, for the deterministic schedulers (PNDM, DDIM, DPM-Solver++, UniPC, Euler).
        ``latents``: optional initial noise, (num_pairs, 2, C, h, w) with [:, 0] global and [:, 1] part.
        ``backgrounds``: BCM only, one background image per pair (the object blacked out), in [-1, 1] as a
        tensor (num_pairs, 3, H, W) or as PIL/uint8 images.
        ``bcm_mode``: "folded" runs the background reference pass as extra rows of the same UNet call;
        "two-pass" runs it as a separate forward first, as the official code does (same numbers, slower).
        ``merge_lora``: fold each branch's LoRA into its own copy of the projections for the duration of the call
        (one matmul per projection and branch instead of three; equal outputs up to float rounding).
        ``background_noise``: BCM under guidance, how the unconditional (grey) and conditional background rows
        are noised at each step: "shared" (one draw per pair and step for both), or "independent" (a draw for
        each, as the authors' inference does). Both come from the pair's own generator.
        ``zero_mean_noise``: centre each drawn initial noise map (per pair, branch and channel: zero mean, unit
        std); ``"part"``: the part branch's maps only. SD's schedule keeps a little of the image at its last step,
        so the UNet reads an image's mean colour from the noise (Lin et al. 2023); on small latents (16x16: four
        times SD's 64x64 in that mean's spread) this tints the part branch's grey canvas (docs/demo.md). Centring
        the part alone keeps that canvas grey and leaves the whole image its colour from the noise, so whole
        images keep their spread of colours.
        ``shared_initial_noise``: start the part branch from the whole branch's noise draw (then centred, with
        ``zero_mean_noise``), where the authors' inference draws each branch's noise independently. Each branch
        still starts from standard normal noise, so what either branch samples on its own is unchanged; only the
        two branches' starts agree, which leaves less for SAIM to reconcile about where the defect goes: on the
        demo's 16x16 latents it raised the pairs' median mask IoU from 0.51 to 0.64 (mean of 3 seeds;
        docs/demo.md). Given ``latents`` are used as they are.
        """
        if num_pairs < 1:
            raise InputError(f"num_pairs must be at least 1, got {num_pairs}")
        if zero_mean_noise not in ZERO_MEAN_NOISE:
            raise InputError(f"zero_mean_noise must be False, True or 'part', got {zero_mean_noise!r}")
        if output_type not in ("pil", "np", "pt"):
            raise InputError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if self.adapter_config is None:
            raise InputError(
                "no adapters installed: build the pipeline with DualAnoDiffPipeline.from_pretrained"
            )
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        device, dtype = self.unet.device, self.unet.dtype
        generators, seeds = self._pair_generators(num_pairs, generator, seeds)
        do_cfg = guidance_scale > 1.0
        use_bcm = self.adapter_config.bcm and backgrounds is not None
        if bcm_mode not in ("folded", "two-pass"):
            raise InputError(f"bcm_mode must be 'folded' or 'two-pass', got {bcm_mode!r}")
        if background_noise not in BACKGROUND_NOISE:
            raise InputError(
                f"background_noise must be one of {', '.join(BACKGROUND_NOISE)}, got {background_noise!r}"
            )
        if self.adapter_config.bcm and backgrounds is None:
            raise InputError("these adapters use BCM: pass one background image per pair (backgrounds=...)")

        # Text: pair rows [global, part] per pair; under CFG the unconditional half comes first (METHOD 2).
        emb = encode_prompts(self.tokenizer, self.text_encoder, [global_prompt, part_prompt, negative_prompt])
        cond = emb[:2].repeat(num_pairs, 1, 1)
        text = torch.cat([emb[2:3].expand_as(cond), cond]) if do_cfg else cond
        if use_bcm:  # background rows: global prompt (empty prompt for the unconditional ones)
            bg_text = emb[0:1].expand(num_pairs, -1, -1)
            text = torch.cat(
                [text, emb[2:3].expand(num_pairs, -1, -1), bg_text] if do_cfg else [text, bg_text]
            )
        text = text.to(dtype)

        # Initial noise, one generator per pair: (num_pairs, 2, C, h, w) -> interleaved rows.
        shape = (
            2,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = torch.stack([torch.randn(shape, generator=g) for g in generators])
            if shared_initial_noise:  # the same draws as without, so the whole branch's start is unchanged
                latents[:, 1] = latents[:, 0]
            if zero_mean_noise == "part":
                latents[:, 1] = centred_noise(latents[:, 1])
            elif zero_mean_noise:
                latents = centred_noise(latents)
        elif tuple(latents.shape) != (num_pairs, *shape):
            raise InputError(f"latents must have shape {(num_pairs, *shape)}, got {tuple(latents.shape)}")
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents.flatten(0, 1).to(device, dtype) * self.scheduler.init_noise_sigma

        bg_latents = self._background_latents(backgrounds, num_pairs, generators, do_cfg) if use_bcm else None
        noiser = DDPMScheduler.from_config(self.scheduler.config) if use_bcm else None

        if merge_lora:
            self._merge_lora(True)
        try:
            latents = self._denoise(
                latents, text, bg_latents, noiser, generators, guidance_scale, bcm_mode, background_noise
            )
        finally:
            if merge_lora:
                self._merge_lora(False)

        images = (decode_latents(self.vae, latents).float() / 2 + 0.5).clamp(0, 1)  # (2B, 3, H, W)
        wholes, parts = images[0::2].cpu(), images[1::2].cpu()
        masks = None
        if masker is not None:
            masks = [masker(_to_uint8(p)) for p in parts]
        if output_type != "pt":
            wholes, parts = wholes.permute(0, 2, 3, 1).numpy(), parts.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                wholes = [PIL.Image.fromarray(to_uint8(x)) for x in wholes]
                parts = [PIL.Image.fromarray(to_uint8(x)) for x in parts]
        self.maybe_free_model_hooks()
        if not return_dict:
            return wholes, parts, masks, seeds
        return DualAnoDiffOutput(images=wholes, parts=parts, masks=masks, seeds=list(seeds))

    def _denoise(
        self,
        latents,
        text,
        bg_latents,
        noiser,
        generators,
        guidance_scale: float,
        bcm_mode: str,
        background_noise: str = "shared",
    ):
        """The sampling loop (diffusers' loop, on interleaved pair rows plus optional background rows)."""
        device, dtype = latents.device, latents.dtype
        do_cfg, use_bcm = guidance_scale > 1.0, bg_latents is not None
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            pair_text, kwargs = text, None
            if use_bcm:  # background rows noised to the same t, fresh noise from each pair's generator
                noise = _background_noise(bg_latents.shape[1:], generators, do_cfg, background_noise)
                noise = noise.to(device, dtype)
                t_int = torch.full(
                    (bg_latents.shape[0],), int(round(float(t))), device=device, dtype=torch.long
                )
                noisy_bg = noiser.add_noise(bg_latents, noise, t_int)
                num_bg = noisy_bg.shape[0]
                if bcm_mode == "folded":  # the reference pass rides in the same UNet call
                    model_input = torch.cat([model_input, noisy_bg])
                    kwargs = {"background_rows": num_bg}
                else:  # the official structure: a separate reference forward that records attn1 inputs
                    pair_text, recorded = text[:-num_bg], {}
                    self.unet(
                        noisy_bg, t, text[-num_bg:], cross_attention_kwargs={"record_background": recorded}
                    )
                    kwargs = {"background_states": recorded}
            pred = self.unet(model_input, t, pair_text, cross_attention_kwargs=kwargs).sample
            pred = pred[: latents.shape[0] * (2 if do_cfg else 1)]
            if do_cfg:
                uncond, cond_pred = pred.chunk(2)
                pred = uncond + guidance_scale * (cond_pred - uncond)
            latents = self.scheduler.step(pred, t, latents).prev_sample

        return latents

    def _merge_lora(self, merge: bool) -> None:
        for name, proc in self.unet.attn_processors.items():
            if not isinstance(proc, DualBranchAttnProcessor):  # e.g. the benchmarks' loop reference
                continue
            if merge:
                proc.merge_lora(self.unet.get_submodule(name.removesuffix(".processor")))
            else:
                proc.unmerge_lora()

    def _pair_generators(
        self, num_pairs: int, generator, seeds: Sequence[int] | None
    ) -> tuple[list[torch.Generator], list[int]]:
        """One CPU generator per pair, and the seed it was made from (recorded in every output)."""
        if seeds is None:
            if isinstance(generator, Sequence):
                if len(generator) != num_pairs:
                    raise InputError(f"got {len(generator)} generators for {num_pairs} pairs")
                seeds = [int(g.initial_seed()) for g in generator]
            else:
                gen = generator if generator is not None else torch.Generator().manual_seed(0)
                seeds = torch.randint(0, 2**31 - 1, (num_pairs,), generator=gen).tolist()
        elif len(seeds) != num_pairs:
            raise InputError(f"got {len(seeds)} seeds for {num_pairs} pairs")
        return [torch.Generator().manual_seed(int(s)) for s in seeds], [int(s) for s in seeds]

    def _background_latents(self, backgrounds, num_pairs: int, generators, do_cfg: bool) -> torch.Tensor:
        """VAE latents of the backgrounds (and of mid-grey ones for the unconditional rows under CFG)."""
        if isinstance(backgrounds, torch.Tensor):
            bg = backgrounds
        else:
            bg = torch.stack([_image_to_tensor(b) for b in backgrounds])
        if bg.shape[0] != num_pairs:
            raise InputError(f"BCM needs one background per pair: got {bg.shape[0]} for {num_pairs} pairs")
        bg = bg.to(self.vae.device, self.vae.dtype)
        scale = self.adapter_config.background_latent_scaling == "correct"
        # VAE sampling draws from each pair's own generator, so a pair does not depend on its batch.
        latents = torch.cat(
            [encode_latents(self.vae, bg[i : i + 1], generators[i], scale=scale) for i in range(num_pairs)]
        )
        if do_cfg:  # unconditional rows: a mid-grey background (0 in [-1, 1]) with the empty prompt
            # One encoder pass; each pair samples its grey latent from its own generator (batch-invariance).
            grey = self.vae.encode(torch.zeros_like(bg[:1])).latent_dist
            grey_latents = torch.cat([grey.sample(g) for g in generators])
            if scale:
                grey_latents = grey_latents * self.vae.config.scaling_factor
            latents = torch.cat([grey_latents, latents])
        return latents.to(self.unet.dtype)


def _background_noise(shape, generators, do_cfg: bool, mode: str) -> torch.Tensor:
    """This step's noise for the background rows, [uncond..., cond...] under guidance, from each pair's generator.

    "shared": one draw per pair, used by both of its rows; "independent": the unconditional row's draw, then the
    conditional row's (the authors' inference noises its two background rows with one `randn_like`).
    """
    if mode == "independent" and do_cfg:
        draws = [torch.randn((2, *shape), generator=g) for g in generators]
        return torch.cat([torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])])
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    return torch.cat([noise] * (2 if do_cfg else 1))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8, rounded."""
    return (image * 255).round().clip(0, 255).astype(np.uint8)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return to_uint8(image.permute(1, 2, 0).numpy())


def _image_to_tensor(image: PIL.Image.Image | np.ndarray) -> torch.Tensor:
    """A PIL or uint8 (H, W, 3) image -> (3, H, W) in [-1, 1]."""
    array = np.asarray(
        image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, dtype=np.float32
    )
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
