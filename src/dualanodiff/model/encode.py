"""Prompt and image encoding shared by training and generation, so both see exactly the same inputs."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

GLOBAL_PROMPT = "a vfx with sks"  # the whole defective image
PART_PROMPT = "sks"  # the anomaly part alone


def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """CLIP last hidden states, (len(prompts), 77, D), padded to the tokenizer's max length as SD does."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    return text_encoder(ids)[0]


def pair_prompt_embeddings(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    num_pairs: int,
    global_prompt: str = GLOBAL_PROMPT,
    part_prompt: str = PART_PROMPT,
) -> torch.Tensor:
    """Interleaved text embeddings [global, part] * num_pairs, (2 * num_pairs, 77, D)."""
    emb = encode_prompts(tokenizer, text_encoder, [global_prompt, part_prompt])
    return emb.repeat(num_pairs, 1, 1)


def encode_latents(
    vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator | None = None, scale: bool = True
) -> torch.Tensor:
    """VAE latents of images in [-1, 1]: ``encode(x).sample() * scaling_factor``.

    ``scale=False`` reproduces the official BCM code, which forgets the scaling factor for backgrounds.
    """
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.sample(generator)
    return latents * vae.config.scaling_factor if scale else latents


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from latents."""
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
