"""`DualAnoDiffPipeline`: Stable Diffusion 1.5 with the dual-branch adapters, in diffusers' shape.

    pipe = DualAnoDiffPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.load_adapters("adapters/hazelnut_crack")
    pairs = pipe(num_pairs=8, generator=torch.Generator().manual_seed(0))

``pipe.unet`` is the base UNet with the dual processors installed: calling it on an interleaved pair batch
``[global_0, part_0, global_1, part_1, ...]`` runs the dual forward. A call runs, as diffusers' pipelines do,
`check_inputs`, `encode_prompt`, `prepare_latents` (and `prepare_background_latents` with BCM), `denoise`
and `decode`; `DualAnoDiffPlacementPipeline` (placement on real normal images) reuses them and changes only
what happens after each step and at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import InputError
from ..model.base import load_base
from ..model.dual_unet import AdapterConfig
from ..model.encode import GLOBAL_PROMPT, PART_PROMPT, decode_latents, encode_latents, encode_prompts
from .loaders import DualAnoDiffLoaderMixin
from .noise import BACKGROUND_NOISE, ZERO_MEAN_NOISE, background_noise, centred_noise, pair_generators


@dataclass
class DualAnoDiffOutput(BaseOutput):
    """Generated pairs: whole anomaly images, anomaly-part images, masks (when a masker is given), seeds.

    ``nonfinite_steps[i]``: the first denoising step (1-based) at which pair i's latents held a NaN or an
    infinity (e.g. an extreme guidance scale), None while they stayed finite. Such a pair's images are
    meaningless and must not be kept.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    parts: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    masks: list[np.ndarray] | None
    seeds: list[int]
    nonfinite_steps: list[int | None] | None = None


class DualAnoDiffPipeline(DiffusionPipeline, DualAnoDiffLoaderMixin):
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
        adapter_config: AdapterConfig | None = None,
        *,
        adapters: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
    ) -> DualAnoDiffPipeline:
        """Load a Stable Diffusion base (hub id or local diffusers folder) and install adapters.

        As in diffusers, ``base`` is a pipeline folder or hub id and ``torch_dtype``/``local_files_only`` mean
        what they mean there. One departure: the adapters are not part of that folder (as diffusers keeps
        LoRA apart, ``load_lora_weights``): ``adapters`` loads a folder saved by `save_adapters`, and without
        it fresh adapters with ``adapter_config`` (default options when None) are installed, for training.
        """
        components = load_base(base, torch_dtype=torch_dtype, local_files_only=local_files_only)
        pipe = cls.from_components(components, adapter_config)
        if adapters is not None:
            pipe.load_adapters(adapters)
        return pipe

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

    @classmethod
    def from_pipe(cls, pipeline: DualAnoDiffPipeline, **kwargs) -> DualAnoDiffPipeline:
        """A pipeline of this class on ``pipeline``'s very modules (no copy), adapters included, as diffusers'
        ``from_pipe`` (e.g. the placement pipeline from a loaded one). ``kwargs`` replace components."""
        pipe = cls(**{**pipeline.components, **kwargs})
        pipe.adapter_config = pipeline.adapter_config
        pipe.base_source = pipeline.base_source
        pipe.base_fingerprint = pipeline.base_fingerprint
        return pipe

    # ---- the steps of a call --------------------------------------------------------------------------
    def check_inputs(
        self,
        num_pairs: int,
        output_type: str,
        zero_mean_noise: bool | str,
        bcm_mode: str = "folded",
        background_noise: str = "shared",
    ) -> None:
        """Refuse bad arguments before any work, each with a one-line message."""
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
        if bcm_mode not in ("folded", "two-pass"):
            raise InputError(f"bcm_mode must be 'folded' or 'two-pass', got {bcm_mode!r}")
        if background_noise not in BACKGROUND_NOISE:
            raise InputError(
                f"background_noise must be one of {', '.join(BACKGROUND_NOISE)}, got {background_noise!r}"
            )

    def encode_prompt(
        self,
        num_pairs: int,
        global_prompt: str,
        part_prompt: str,
        negative_prompt: str,
        do_cfg: bool,
        bcm: bool,
    ) -> torch.Tensor:
        """The text rows of a UNet call: [global, part] per pair, under guidance the unconditional half
        first (METHOD 2); with BCM, the background rows last (global prompt, empty prompt unconditionally)."""
        emb = encode_prompts(self.tokenizer, self.text_encoder, [global_prompt, part_prompt, negative_prompt])
        cond = emb[:2].repeat(num_pairs, 1, 1)
        text = torch.cat([emb[2:3].expand_as(cond), cond]) if do_cfg else cond
        if bcm:
            bg_text = emb[0:1].expand(num_pairs, -1, -1)
            text = torch.cat(
                [text, emb[2:3].expand(num_pairs, -1, -1), bg_text] if do_cfg else [text, bg_text]
            )
        return text.to(self.unet.dtype)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int, int]:
        """One pair's latent shape: (2 branches, C, h, w)."""
        f = self.vae_scale_factor
        return (2, self.unet.config.in_channels, height // f, width // f)

    def prepare_latents(
        self,
        generators: list[torch.Generator],
        shape: tuple[int, int, int, int],
        latents: torch.Tensor | None,
        zero_mean_noise: bool | str,
        shared_initial_noise: bool,
    ) -> torch.Tensor:
        """The initial noise, (num_pairs, 2, C, h, w) with [:, 0] the whole branch and [:, 1] the part, each
        pair's drawn from its own generator, unscaled (``latents``, when given, are checked and returned).

        ``zero_mean_noise``: centre each map (per pair, branch and channel: zero mean, unit std); ``"part"``:
        the part branch's maps only, which keeps the part's canvas grey on small latents where the UNet reads
        an image's mean colour from the noise (Lin et al. 2023; docs/demo.md). ``shared_initial_noise``: the
        part branch starts from the whole branch's draw (then centred), where the authors draw one per branch;
        each branch still starts from standard normal noise, only the two starts agree.
        """
        if latents is not None:
            if tuple(latents.shape) != (len(generators), *shape):
                raise InputError(
                    f"latents must have shape {(len(generators), *shape)}, got {tuple(latents.shape)}"
                )
            return latents
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators])
        if shared_initial_noise:  # the same draws as without, so the whole branch's start is unchanged
            latents[:, 1] = latents[:, 0]
        if zero_mean_noise == "part":
            latents[:, 1] = centred_noise(latents[:, 1])
        elif zero_mean_noise:
            latents = centred_noise(latents)
        return latents

    def prepare_background_latents(
        self, backgrounds, num_pairs: int, generators, do_cfg: bool
    ) -> torch.Tensor:
        """BCM: VAE latents of the backgrounds (and of mid-grey ones for the unconditional rows under CFG)."""
        if isinstance(backgrounds, torch.Tensor):
            bg = backgrounds
        else:
            bg = torch.stack([image_to_tensor(b) for b in backgrounds])
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

    def after_step(self, latents: torch.Tensor, step_index: int, t: torch.Tensor) -> torch.Tensor:
        """What happens to the interleaved latents (2B, C, h, w) after scheduler step ``step_index``: nothing
        here; the placement pipeline holds the whole branch to its normal image."""
        return latents

    def denoise(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        bg_latents: torch.Tensor | None,
        generators: list[torch.Generator],
        guidance_scale: float,
        bcm_mode: str,
        background_noise_mode: str = "shared",
    ) -> tuple[torch.Tensor, list[int | None]]:
        """Diffusers' sampling loop on interleaved pair rows (plus the background rows with BCM).

        Returns the final latents (2B, C, h, w) and, per pair, the first step (1-based) at which its latents
        stopped being finite (None if never). Pairs do not mix in a UNet call (attention, SAIM and group
        norm stay within a pair), so a non-finite pair leaves the others unchanged; once every pair is
        non-finite the loop stops.
        """
        device, dtype = latents.device, latents.dtype
        do_cfg, use_bcm = guidance_scale > 1.0, bg_latents is not None
        noiser = DDPMScheduler.from_config(self.scheduler.config) if use_bcm else None
        num_pairs = latents.shape[0] // 2
        nonfinite: list[int | None] = [None] * num_pairs
        for step_index, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            pair_text, kwargs = text, None
            if use_bcm:  # background rows noised to the same t, fresh noise from each pair's generator
                noise = background_noise(bg_latents.shape[1:], generators, do_cfg, background_noise_mode)
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
            latents = self.after_step(latents, step_index, t)
            finite = torch.isfinite(latents).flatten(1).all(1).view(num_pairs, 2).all(1).tolist()
            for i, ok in enumerate(finite):
                if not ok and nonfinite[i] is None:
                    nonfinite[i] = step_index + 1
            if all(s is not None for s in nonfinite):
                break
        return latents, nonfinite

    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleaved latents -> (whole images, parts), each (B, 3, H, W) in [0, 1] on the CPU."""
        images = (decode_latents(self.vae, latents).float() / 2 + 0.5).clamp(0, 1)
        return images[0::2].cpu(), images[1::2].cpu()

    # ---- a call ---------------------------------------------------------------------------------------
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
        (equal outputs up to float rounding).
        ``background_noise``: BCM under guidance, how the unconditional (grey) and conditional background rows
        are noised at each step: "shared" (one draw per pair and step for both), or "independent" (a draw for
        each, as the authors' inference does).
        ``zero_mean_noise``, ``shared_initial_noise``: see `prepare_latents`.
        """
        self.check_inputs(num_pairs, output_type, zero_mean_noise, bcm_mode, background_noise)
        if self.adapter_config.bcm and backgrounds is None:
            raise InputError("these adapters use BCM: pass one background image per pair (backgrounds=...)")
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        generators, seeds = pair_generators(num_pairs, generator, seeds)
        do_cfg = guidance_scale > 1.0
        use_bcm = self.adapter_config.bcm and backgrounds is not None

        text = self.encode_prompt(num_pairs, global_prompt, part_prompt, negative_prompt, do_cfg, use_bcm)
        shape = self.latent_shape(height, width)
        latents = self.prepare_latents(generators, shape, latents, zero_mean_noise, shared_initial_noise)
        self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
        latents = (
            latents.flatten(0, 1).to(self.unet.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        )
        bg_latents = (
            self.prepare_background_latents(backgrounds, num_pairs, generators, do_cfg) if use_bcm else None
        )

        if merge_lora:
            self.merge_adapters(True)
        try:
            latents, nonfinite = self.denoise(
                latents, text, bg_latents, generators, guidance_scale, bcm_mode, background_noise
            )
        finally:
            if merge_lora:
                self.merge_adapters(False)

        wholes, parts = self.decode(latents)
        masks = [masker(tensor_to_uint8(p)) for p in parts] if masker is not None else None
        wholes, parts = convert_output(wholes, output_type), convert_output(parts, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return wholes, parts, masks, seeds
        return DualAnoDiffOutput(
            images=wholes, parts=parts, masks=masks, seeds=list(seeds), nonfinite_steps=nonfinite
        )


def convert_output(images: torch.Tensor, output_type: str):
    """(B, 3, H, W) in [0, 1] -> the requested output type: "pt" as is, "np" (B, H, W, 3) floats, "pil"."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray(to_uint8(x)) for x in array]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8, rounded (non-finite values become 0)."""
    return (np.nan_to_num(image, nan=0.0) * 255).round().clip(0, 255).astype(np.uint8)


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return to_uint8(image.permute(1, 2, 0).numpy())


def image_to_tensor(image: PIL.Image.Image | np.ndarray) -> torch.Tensor:
    """A PIL or uint8 (H, W, 3) image -> (3, H, W) in [-1, 1]."""
    array = np.asarray(
        image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, dtype=np.float32
    )
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
