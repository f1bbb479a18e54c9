"""`DualAnoDiffPlacementPipeline`: the same adapters, the defect drawn into a region of a real normal image.

    pipe = DualAnoDiffPlacementPipeline.from_pretrained(base, adapters="adapters/hazelnut_crack")
    out = pipe(normal_images=[good], regions=[where], seeds=[0], band=4)

As diffusers keeps inpainting beside text-to-image, this is a sibling of `DualAnoDiffPipeline` that changes
two things and nothing else (the part branch and SAIM draw the defect as usual):

- *Blended latent diffusion* (Avrahami et al. 2023; diffusers' inpainting with a plain UNet does the same):
  after every denoising step the whole branch's latents outside the allowed area (region grown by the seam
  band) are replaced by the normal image's latent noised to the next step's level, with the whole branch's own
  initial noise draw; after the last step by the normal image's latent itself. Inside the band the sampler
  is free at every step, so the seam is drawn by the model rather than cut.
- *Exact background*: the decoded whole image is blended into the normal image over the band (weight 1 in the
  region, falling to 0 at the band's outer edge) and the normal image's own pixels are copied beyond it, so
  no pixel outside the allowed area goes through the VAE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..masks.regions import allowed_area, blend_weights, composite
from ..model.encode import GLOBAL_PROMPT, PART_PROMPT
from .dual import DualAnoDiffOutput, DualAnoDiffPipeline, convert_output, image_to_tensor, to_uint8
from .noise import pair_generators


@dataclass
class PlacementOutput(DualAnoDiffOutput):
    """Placed pairs: ``images`` are the normal images with the defect drawn in (bit for bit the normal image
    outside ``allowed``), ``generated`` the decoded whole images before that blend, ``allowed`` the area each
    pair may change (bool H x W: region plus band)."""

    generated: np.ndarray | None = None
    allowed: list[np.ndarray] | None = None


class DualAnoDiffPlacementPipeline(DualAnoDiffPipeline):
    """`DualAnoDiffPipeline` whose whole branch is held to a real normal image outside a target region."""

    # (the rows' clean latents to hold (2B, C, h, w), their noise, the free mask (2B, 1, h, w)), while sampling
    _hold: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def after_step(self, latents: torch.Tensor, step_index: int, t: torch.Tensor) -> torch.Tensor:
        """Blend the rows with their held latents outside the free area, noised to the next step's level."""
        if self._hold is None:  # sampling freely (e.g. the parent's call)
            return latents
        clean, noise, free = self._hold
        timesteps = self.scheduler.timesteps
        if step_index + 1 < len(timesteps):
            next_t = timesteps[step_index + 1 : step_index + 2]
            held = self.scheduler.add_noise(clean, noise, next_t.repeat(clean.shape[0]))
        else:
            held = clean
        return free * latents + (1 - free) * held.to(latents.dtype)

    @torch.no_grad()
    def __call__(
        self,
        normal_images: Sequence[PIL.Image.Image | np.ndarray],
        regions: Sequence[np.ndarray],
        band: int = 4,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.5,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        seeds: Sequence[int] | None = None,
        global_prompt: str = GLOBAL_PROMPT,
        part_prompt: str = PART_PROMPT,
        negative_prompt: str = "",
        output_type: str = "np",
        masker: Callable[[np.ndarray], np.ndarray] | None = None,
        merge_lora: bool = True,
        zero_mean_noise: bool | str = False,
        shared_initial_noise: bool = False,
        hold_part: bool = True,
    ) -> PlacementOutput:
        """One pair per normal image: the defect drawn inside ``regions[i]`` (bool H x W, the image's size)
        of ``normal_images[i]`` (uint8 H x W x 3 or PIL; all of one size, a multiple of the VAE's factor).

        ``band``: seam width in pixels around the region, free for the sampler and blended in pixels.
        ``hold_part``: hold the part branch to its empty canvas (the mid-grey image the part images of training
        show outside the defect) outside the same area, so the part draws its defect inside the region too and
        SAIM pulls the whole image's defect there; False leaves the part branch free, as in free sampling.
        Sampling options as `DualAnoDiffPipeline.__call__` (BCM adapters run without their background
        reference here: the real normal image already gives the background).
        """
        num_pairs = len(normal_images)
        self.check_inputs(num_pairs, output_type, zero_mean_noise)
        normals = [
            np.asarray(n.convert("RGB") if isinstance(n, PIL.Image.Image) else n) for n in normal_images
        ]
        height, width = normals[0].shape[:2]
        self.check_placement(normals, regions, band)
        generators, seeds = pair_generators(num_pairs, generator, seeds)
        do_cfg = guidance_scale > 1.0
        device, dtype = self.unet.device, self.unet.dtype

        text = self.encode_prompt(num_pairs, global_prompt, part_prompt, negative_prompt, do_cfg, False)
        shape = self.latent_shape(height, width)
        initial = self.prepare_latents(generators, shape, None, zero_mean_noise, shared_initial_noise)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = initial.flatten(0, 1).to(device, dtype) * self.scheduler.init_noise_sigma

        allowed = [allowed_area(np.asarray(r, bool), band) for r in regions]
        free = self.free_latent_mask(allowed, shape[-2:])
        normal_latents = self.encode_normals(normals)
        canvas = self.canvas_latent(normals[0].shape[:2]).expand_as(normal_latents)
        clean = torch.stack([normal_latents, canvas], 1)  # (B, 2, C, h, w), as the rows interleave
        held_rows = torch.stack([free, free if hold_part else torch.ones_like(free)], 1)
        self._hold = (
            clean.flatten(0, 1).to(device, dtype),
            initial.flatten(0, 1).to(device, dtype),
            held_rows.flatten(0, 1).to(device, dtype),
        )
        if merge_lora:
            self.merge_adapters(True)
        try:
            latents, nonfinite = self.denoise(latents, text, None, generators, guidance_scale, "folded")
        finally:
            self._hold = None
            if merge_lora:
                self.merge_adapters(False)

        wholes, parts = self.decode(latents)
        generated = wholes.permute(0, 2, 3, 1).numpy()
        placed = [
            composite(to_uint8(g), n, blend_weights(np.asarray(r, bool), band))
            for g, n, r in zip(generated, normals, regions)
        ]
        placed_t = torch.from_numpy(np.stack(placed)).permute(0, 3, 1, 2).float() / 255
        masks = None
        if masker is not None:
            masks = [masker(to_uint8(p)) for p in parts.permute(0, 2, 3, 1).numpy()]
        self.maybe_free_model_hooks()
        return PlacementOutput(
            images=convert_output(placed_t, output_type),
            parts=convert_output(parts, output_type),
            masks=masks,
            seeds=list(seeds),
            nonfinite_steps=nonfinite,
            generated=generated,
            allowed=allowed,
        )

    def check_placement(self, normals: list[np.ndarray], regions: Sequence[np.ndarray], band: int) -> None:
        """One-line errors for inputs that cannot be placed, before any model runs."""
        if len(regions) != len(normals):
            raise InputError(f"got {len(regions)} regions for {len(normals)} normal images")
        if band < 0:
            raise InputError(f"band must be 0 or more pixels, got {band}")
        height, width = normals[0].shape[:2]
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise InputError(
                f"normal images of {width}x{height} px: both sides must be multiples of {self.vae_scale_factor}"
            )
        for i, (normal, region) in enumerate(zip(normals, regions)):
            if normal.shape != (height, width, 3) or normal.dtype != np.uint8:
                raise InputError(f"normal image {i}: expected uint8 {width}x{height} RGB, got {normal.shape}")
            if np.shape(region) != (height, width):
                raise InputError(f"region {i}: {np.shape(region)} px, the normal image is {(height, width)}")
            if not np.asarray(region, bool).any():
                raise InputError(f"region {i} is empty: nowhere to place the defect")

    def encode_normals(self, normals: list[np.ndarray]) -> torch.Tensor:
        """The normal images' latents (the VAE posterior's mean, scaled): deterministic, one per pair."""
        x = torch.stack([image_to_tensor(n) for n in normals]).to(self.vae.device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def canvas_latent(self, hw: tuple[int, int]) -> torch.Tensor:
        """(1, C, h, w): the latent of the part images' empty canvas, exactly mid-grey (0 in [-1, 1])."""
        grey = torch.zeros((1, 3, *hw), device=self.vae.device, dtype=self.vae.dtype)
        return self.vae.encode(grey).latent_dist.mean * self.vae.config.scaling_factor

    def free_latent_mask(self, allowed: list[np.ndarray], latent_hw: torch.Size) -> torch.Tensor:
        """(B, 1, h, w): 1 on latent cells that overlap the allowed area (free to change), 0 elsewhere."""
        pixels = torch.from_numpy(np.stack(allowed)).float()[:, None]
        return (F.adaptive_max_pool2d(pixels, tuple(latent_hw)) > 0).float()
