"""Pretraining the demo base: a tiny Stable Diffusion (SD 1.5 structure) that has learned the synthetic domain.

DualAnoDiff adapts a base that already knows what images look like (SD 1.5). For the demo, on a CPU with no
download, that prior is made here: first the tiny AutoencoderKL learns to reconstruct synthetic images (a
random VAE cannot), then the tiny UNet learns to denoise VAE latents of *normal* synthetic images, conditioned
on the category name ("weave", "pill"; 10 % empty prompts, so classifier-free guidance works), with SD 1.5's
DDPM noise schedule and epsilon loss. The text encoder stays the seeded random one of ``build_base("tiny")``
and is rebuilt from its seed, never shipped.

Data: fresh renders of the synthetic generator under the split name ``"pretrain"`` (seeds disjoint from every
image of the demo dataset, whose splits are ``train``/``test``), with flips. The VAE also sees defective
renders, as SD's VAE has seen scratches and stains: a decoder that cannot draw a crack leaves the adapters
nothing to learn; and their *anomaly-part* images (the defect on a mid-grey canvas, the part branch's target):
a VAE that never saw mid-grey decodes it as the nearest thing it knows (beige cloth, measured), so the part
branch could never draw a clean canvas and every mask would cover the whole image. The UNet sees normal images
only, so defects come from the few-shot adapters alone.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from .model.base import SD15_SCHEDULER_CONFIG, BaseComponents, build_base
from .model.encode import encode_prompts
from .progress import progress_bar
from .synthetic import CATEGORIES, DEFECT_TYPES, synthetic_sample


@dataclass
class PretrainConfig:
    """Every setting that decides the shipped weights (recorded next to them)."""

    seed: int = 0
    resolution: int = 64
    pool_normal: int = 384  # normal renders per category (x4 with flips)
    pool_defect: int = 48  # defective renders per category and type (and their parts), VAE only
    defect_weight: float = 10.0  # extra reconstruction weight on (dilated) defect pixels
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 1600
    unet_batch: int = 32
    unet_lr: float = 1e-3
    ema_decay: float = 0.995
    uncond_prob: float = 0.1
    threads: int = 1  # 1: far faster than 2 when the 2 cores are shared (OpenMP oversubscription)


def _render_pool(cfg: PretrainConfig, defects: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3) and category index per image, rendered from the seed; with ``defects``, also
    the defective renders and their anomaly-part images (mid-grey outside the mask, as METHOD section 6)."""
    images, labels, masks = [], [], []
    parts = []
    jobs = [(ci, c, "good", i) for ci, c in enumerate(CATEGORIES) for i in range(cfg.pool_normal)]
    if defects:
        jobs += [
            (ci, c, k, i)
            for ci, c in enumerate(CATEGORIES)
            for k in DEFECT_TYPES[c]
            for i in range(cfg.pool_defect)
        ]
    for ci, cat, kind, i in progress_bar(jobs, desc="rendering pretraining images", leave=False):
        sample = synthetic_sample(cat, "pretrain", kind, i, cfg.seed, cfg.resolution)
        images.append(sample.image)
        labels.append(ci)
        masks.append(sample.mask)
        if kind != "good":
            # (image / 127.5 - 1) * mask, back in uint8: 127.5 rounds to 128 outside the defect.
            parts.append(np.where(sample.mask[..., None], sample.image, 128).astype(np.uint8))
    part_masks = [m for m in masks if m.any()]
    return np.stack(images + parts), np.asarray(labels + [-1] * len(parts)), np.stack(masks + part_masks)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips per sample (p = 0.5 each)."""
    n = x.shape[0]
    h = torch.rand(n, generator=gen) < 0.5
    v = torch.rand(n, generator=gen) < 0.5
    x = torch.where(h[:, None, None, None], x.flip(-1), x)
    return torch.where(v[:, None, None, None], x.flip(-2), x)


def _lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(base: BaseComponents, cfg: PretrainConfig, log: list[dict]) -> None:
    """Reconstruction (L1 + L2) plus a small KL, on normal and defective renders and parts, with flips.

    Defect pixels weigh ``1 + defect_weight``: they are a few percent of the pixels, and a plain mean lets
    an 8x8x4 latent drop them altogether (measured: stains vanished from every reconstruction).
    """
    from scipy import ndimage

    images, _, masks = _render_pool(cfg, defects=True)
    data = _to_tensor(images)
    grown = np.stack([ndimage.binary_dilation(m, iterations=1) for m in masks])
    weights = 1.0 + cfg.defect_weight * torch.from_numpy(grown).float()[:, None]
    vae = base.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    bar = progress_bar(range(cfg.vae_steps), desc="pretraining the VAE")
    for step in bar:
        idx = torch.randint(0, data.shape[0], (cfg.vae_batch,), generator=gen)
        x, w = _flip(torch.cat([data[idx], weights[idx]], 1), gen).split([3, 1], 1)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        rec_loss = ((rec - x).abs() + (rec - x).pow(2)).mul(w).sum() / (w.sum() * 3)
        loss = rec_loss + cfg.kl_weight * post.kl().mean()
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.vae_steps, cfg.vae_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log.append({"stage": "vae", "step": step, "loss": float(rec_loss)})
        bar.set_postfix(rec=f"{float(rec_loss):.4f}")
    vae.eval().requires_grad_(False)
    # SD's convention: scale latents to unit variance (SD 1.5's 0.18215 was found the same way).
    with torch.no_grad():
        z = torch.cat([vae.encode(data[i : i + 64]).latent_dist.mean for i in range(0, len(data), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))


def train_unet(base: BaseComponents, cfg: PretrainConfig, log: list[dict]) -> torch.nn.Module:
    """Epsilon MSE with SD 1.5's DDPM schedule on latents of normal renders; returns the EMA UNet."""
    images, labels, _ = _render_pool(cfg, defects=False)
    data = _to_tensor(images)
    vae, unet = base.vae, base.unet
    scale = vae.config.scaling_factor
    with torch.no_grad():
        # The four flips of every image, encoded once: (N, 4 flips, ...) posterior mean and std.
        means, stds = [], []
        for i in progress_bar(range(0, len(data), 64), desc="encoding latents", leave=False):
            x = data[i : i + 64]
            flips = torch.stack([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)], 1).flatten(0, 1)
            post = vae.encode(flips).latent_dist
            means.append(post.mean.unflatten(0, (-1, 4)))
            stds.append(post.std.unflatten(0, (-1, 4)))
        means, stds = torch.cat(means), torch.cat(stds)
        prompts = list(CATEGORIES) + [""]
        text = encode_prompts(base.tokenizer, base.text_encoder, prompts)
    noise_sched = DDPMScheduler(
        **{k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}
    )
    unet.train().requires_grad_(True)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    labels_t = torch.from_numpy(labels)
    bar = progress_bar(range(cfg.unet_steps), desc="pretraining the UNet")
    for step in bar:
        idx = torch.randint(0, means.shape[0], (cfg.unet_batch,), generator=gen)
        flip = torch.randint(0, 4, (cfg.unet_batch,), generator=gen)
        mu, sd = means[idx, flip], stds[idx, flip]
        z0 = (mu + sd * torch.randn(mu.shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        cond = labels_t[idx].clone()
        cond[torch.rand(cfg.unet_batch, generator=gen) < cfg.uncond_prob] = len(CATEGORIES)
        pred = unet(zt, t, text[cond]).sample
        loss = (pred - noise).pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.unet_steps, cfg.unet_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (step + 1) / (step + 10))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        log.append({"stage": "unet", "step": step, "loss": float(loss)})
        bar.set_postfix(mse=f"{float(loss):.4f}")
    unet.eval().requires_grad_(False)
    return ema


def pretrain_base(
    cfg: PretrainConfig, out_dir: str | Path, stages: tuple[str, ...] = ("vae", "unet")
) -> Path:
    """Run both stages and write ``demo_base.safetensors`` (fp16) and ``demo_base.json`` to ``out_dir``.

    ``stages=("unet",)`` reuses the VAE already in ``out_dir`` (for iterating on the UNet alone).
    """
    from .demo_base import load_demo_base, save_demo_base

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    log: list[dict] = []
    times: dict[str, float] = {}
    if "vae" in stages:
        base = build_base("tiny", seed=cfg.seed, resolution=cfg.resolution)
        started = time.perf_counter()
        train_vae(base, cfg, log)
        times["vae_s"] = round(time.perf_counter() - started, 1)
        # The UNet learns on the VAE as shipped (fp16), so one run equals a VAE run + a `stages=("unet",)` run.
        for p in base.vae.parameters():
            p.data = p.data.half().float()
    else:
        base = load_demo_base(out_dir)
        previous = json.loads((out_dir / "demo_base.json").read_text())
        times.update(previous.get("times", {}))
        log += [
            {"stage": "vae", "step": 0, "loss": previous.get("final_losses", {}).get("vae", float("nan"))}
        ]
        base.unet = build_base("tiny", seed=cfg.seed, resolution=cfg.resolution).unet
    if "unet" in stages:
        started = time.perf_counter()
        base.unet = train_unet(base, cfg, log)
        times["unet_s"] = round(time.perf_counter() - started, 1)
    meta = {"config": asdict(cfg), "times": times, "final_losses": _final_losses(log)}
    save_demo_base(base, out_dir, meta)
    return out_dir


def _final_losses(log: list[dict]) -> dict[str, float]:
    out = {}
    for stage in ("vae", "unet"):
        vals = [r["loss"] for r in log if r["stage"] == stage][-50:]
        if vals:
            out[stage] = round(float(np.mean(vals)), 5)
    return out


@torch.no_grad()
def preview_grid(base: BaseComponents, n: int = 8, steps: int = 30, guidance: float = 2.0, seed: int = 0):
    """A picture to judge the base by eye: rows of real renders, their VAE reconstructions, and the UNet's
    samples for each category prompt (PNDM, classifier-free guidance)."""
    from .report import image_grid

    real = np.stack(
        [synthetic_sample(c, "preview", "good", i, seed, 64).image for c in CATEGORIES for i in range(n // 2)]
    )
    x = _to_tensor(real)
    rec = base.vae.decode(base.vae.encode(x).latent_dist.mean).sample
    rows = [real, _to_uint8(rec)]
    scale = base.vae.config.scaling_factor
    text = encode_prompts(base.tokenizer, base.text_encoder, list(CATEGORIES) + [""])
    sched = base.scheduler
    for ci, _cat in enumerate(CATEGORIES):
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(seed + ci)
        size = base.unet.config.sample_size
        z = torch.randn((n, 4, size, size), generator=gen)
        emb = torch.cat([text[-1:].expand(n, -1, -1), text[ci : ci + 1].expand(n, -1, -1)])
        for t in sched.timesteps:
            u, c = base.unet(torch.cat([z, z]), t, emb).sample.chunk(2)
            z = sched.step(u + guidance * (c - u), t, z).prev_sample
        rows.append(_to_uint8(base.vae.decode(z / scale).sample))
    images = [im for row in rows for im in row]
    return image_grid(images, n)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
