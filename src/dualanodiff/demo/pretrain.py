"""Pretraining the demo base: a small Stable Diffusion (SD 1.5's structure, 16x16 latents) with a prior like SD's.

DualAnoDiff adapts a base that already knows what images look like, SD 1.5. For the demo, on a CPU with no
download, that prior is made here, in three stages, each written to the output folder as it finishes:

1. ``vae``: the AutoencoderKL learns to reconstruct the pretraining images (L1 + L2 and a small KL); pixels
   under a mark weigh more, because marks are a few percent of the pixels and a plain mean lets the latent
   drop them. The latent scaling factor is then set, as SD's was, to make latents unit-variance.
2. ``unet``: epsilon MSE with SD 1.5's DDPM schedule on VAE latents, conditioned on a prompt (``"pill"``,
   ``"weave"``, ``"mark"``; 10 % empty prompts, so classifier-free guidance works), EMA weights.
3. ``segmenter``: the reference segmenters of the demo's mask-alignment measure (`alignment`), one per
   category, trained on the test types' renders decoded by the VAE of stage 1. They measure; they never
   train the base.

The pretraining images, like SD's, hold the domain and generic marks but not the test defect types: fresh
normal renders of both categories (split ``"pretrain"``, disjoint from every image of the demo dataset), a
fifth of them with random marks painted over them (`marks`), and plain canvases with marks. The VAE's canvases
are half mid-grey, half coloured (a VAE that never saw mid-grey decodes it as the nearest thing it knows); the
UNet's are all mid-grey, as the part branch's canvas is (SD 1.5 has seen countless things on plain grey
backgrounds). With canvases of random colours in its prior, the part branch drew its canvas in random tints:
SD's schedule keeps 6.8 % of the image at its last step, so a UNet learns to read an image's mean colour from
the noise, and at sampling time reads the random noise's mean as one (Lin et al. 2023); on 16x16 latents that
mean is four times SD's. A prior whose canvases are always grey has no colour to read. With flips. The text encoder stays the seeded random one of ``build_base("tiny")`` and is rebuilt, never
shipped.
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from ..model.base import BaseComponents
from ..model.encode import encode_prompts
from ..progress import progress_bar
from ..synthetic import CATEGORIES, DEFECT_TYPES, synthetic_sample
from ..synthetic.common import seed_sequence
from .marks import add_marks, mark_canvas

logger = logging.getLogger(__name__)

PROMPTS = (*CATEGORIES, "mark")  # label i -> PROMPTS[i]; len(PROMPTS) stands for the empty prompt
STAGES = ("vae", "unet", "segmenter")
VAE_CANVAS_GREY = 0.5  # the VAE must reconstruct canvases of any colour; the UNet learns grey ones


@dataclass
class PretrainConfig:
    """Every setting that decides the shipped weights (recorded next to them)."""

    seed: int = 0
    resolution: int = 64
    pool_normal: int = 512  # normal renders per category
    pool_marked: int = 160  # renders per category with 1-3 marks painted over them
    pool_canvas: int = 384  # plain canvases with marks
    canvas_grey: float = 1.0  # share of mid-grey canvases in the UNet's pool (the VAE's: `VAE_CANVAS_GREY`)
    mark_weight: float = 10.0  # extra reconstruction weight on (dilated) marked pixels
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_crop: int = 32  # the VAE is convolutional: random 32 px crops train it at a quarter of the cost
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 3000
    unet_init: str = ""  # a demo base folder whose UNet to continue from (its EMA weights); "": seeded random
    unet_batch: int = 32
    unet_lr: float = 6e-4
    ema_decay: float = 0.999
    uncond_prob: float = 0.1
    segmenter_steps: int = 1200
    threads: int = 1  # 1: far faster than 2 when the 2 cores are shared (OpenMP oversubscription)


def pretraining_pool(cfg: PretrainConfig, canvas_grey: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3), prompt label per image (index into `PROMPTS`), marked-pixel masks; a share
    ``canvas_grey`` of the canvases is mid-grey."""
    images, labels, masks = [], [], []
    jobs = [(ci, c, i, False) for ci, c in enumerate(CATEGORIES) for i in range(cfg.pool_normal)]
    jobs += [(ci, c, i, True) for ci, c in enumerate(CATEGORIES) for i in range(cfg.pool_marked)]
    for ci, cat, i, marked in progress_bar(jobs, desc="rendering pretraining images", leave=False):
        split = "pretrain-marked" if marked else "pretrain"
        image = synthetic_sample(cat, split, "good", i, cfg.seed, cfg.resolution).image
        mask = np.zeros(image.shape[:2], bool)
        if marked:
            rng = np.random.default_rng(seed_sequence(cfg.seed, "marks", cat, i))
            image, mask = add_marks(rng, image, int(rng.integers(1, 4)))
        images.append(image)
        labels.append(ci)
        masks.append(mask)
    for i in range(cfg.pool_canvas):
        rng = np.random.default_rng(seed_sequence(cfg.seed, "canvas", i))
        image, mask = mark_canvas(rng, cfg.resolution, canvas_grey)
        images.append(image)
        labels.append(len(CATEGORIES))
        masks.append(mask)
    return np.stack(images), np.asarray(labels), np.stack(masks)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips per sample (p = 0.5 each)."""
    n = x.shape[0]
    h = torch.rand(n, generator=gen) < 0.5
    v = torch.rand(n, generator=gen) < 0.5
    x = torch.where(h[:, None, None, None], x.flip(-1), x)
    return torch.where(v[:, None, None, None], x.flip(-2), x)


def _crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of every sample."""
    if size >= x.shape[-1]:
        return x
    corners = torch.randint(0, x.shape[-1] - size + 1, (x.shape[0], 2), generator=gen).tolist()
    return torch.stack([xi[:, r : r + size, c : c + size] for xi, (r, c) in zip(x, corners)])


def _lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _optimizer_step(
    opt: torch.optim.Optimizer, module: torch.nn.Module, loss: torch.Tensor, lr: float
) -> None:
    """One optimizer step at ``lr``, the gradient norm clipped to 1."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()


def train_vae(base: BaseComponents, cfg: PretrainConfig, log: list[dict]) -> None:
    """Reconstruction (L1 + L2, marked pixels weighted) plus a small KL, on random crops with flips; sets the
    scaling factor (on whole images)."""
    from scipy import ndimage

    images, _, masks = pretraining_pool(cfg, VAE_CANVAS_GREY)
    data = _to_tensor(images)
    grown = np.stack([ndimage.binary_dilation(m, iterations=1) for m in masks])
    weights = 1.0 + cfg.mark_weight * torch.from_numpy(grown).float()[:, None]
    vae = base.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    bar = progress_bar(range(cfg.vae_steps), desc="pretraining the VAE", mininterval=5)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (cfg.vae_batch,), generator=gen)
        x, w = _crop(_flip(torch.cat([data[idx], weights[idx]], 1), gen), cfg.vae_crop, gen).split([3, 1], 1)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        rec_loss = ((rec - x).abs() + (rec - x).pow(2)).mul(w).sum() / (w.sum() * 3)
        loss = rec_loss + cfg.kl_weight * post.kl().mean()
        _optimizer_step(opt, vae, loss, _lr_at(step, cfg.vae_steps, cfg.vae_lr))
        log.append({"stage": "vae", "step": step, "loss": float(rec_loss)})
        bar.set_postfix(rec=f"{float(rec_loss):.4f}")
    vae.eval().requires_grad_(False)
    for p in vae.parameters():  # what ships is fp16: the later stages see exactly that
        p.data = p.data.half().float()
    with torch.no_grad():
        z = torch.cat([vae.encode(data[i : i + 64]).latent_dist.mean for i in range(0, len(data), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))


def train_unet(
    base: BaseComponents, cfg: PretrainConfig, log: list[dict], snapshot=None, snapshot_every: int = 250
) -> torch.nn.Module:
    """Epsilon MSE with SD 1.5's DDPM schedule on latents of the pool (four flips each); returns the EMA UNet.

    ``snapshot(ema_unet, step)`` is called every ``snapshot_every`` steps (to look at, or use, a long run early).
    """
    images, labels, _ = pretraining_pool(cfg, cfg.canvas_grey)
    data = _to_tensor(images)
    vae, unet = base.vae, base.unet
    scale = vae.config.scaling_factor
    with torch.no_grad():
        means, stds = [], []
        for i in progress_bar(range(0, len(data), 64), desc="encoding latents", leave=False):
            x = data[i : i + 64]
            flips = torch.stack([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)], 1).flatten(0, 1)
            post = vae.encode(flips).latent_dist
            means.append(post.mean.unflatten(0, (-1, 4)))
            stds.append(post.std.unflatten(0, (-1, 4)))
        means, stds = torch.cat(means), torch.cat(stds)
        text = encode_prompts(base.tokenizer, base.text_encoder, [*PROMPTS, ""])
    noise_sched = DDPMScheduler.from_config(base.scheduler.config)
    unet.train().requires_grad_(True)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    labels_t = torch.from_numpy(labels)
    bar = progress_bar(range(cfg.unet_steps), desc="pretraining the UNet", mininterval=5)
    for step in bar:
        idx = torch.randint(0, means.shape[0], (cfg.unet_batch,), generator=gen)
        flip = torch.randint(0, 4, (cfg.unet_batch,), generator=gen)
        mu, sd = means[idx, flip], stds[idx, flip]
        z0 = (mu + sd * torch.randn(mu.shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        cond = labels_t[idx].clone()
        cond[torch.rand(cfg.unet_batch, generator=gen) < cfg.uncond_prob] = len(PROMPTS)
        pred = unet(zt, t, text[cond]).sample
        loss = (pred - noise).pow(2).mean()
        _optimizer_step(opt, unet, loss, _lr_at(step, cfg.unet_steps, cfg.unet_lr))
        with torch.no_grad():
            decay = min(cfg.ema_decay, (step + 1) / (step + 10))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        log.append({"stage": "unet", "step": step, "loss": float(loss)})
        bar.set_postfix(mse=f"{float(loss):.4f}")
        if snapshot is not None and (step + 1) % snapshot_every == 0 and step + 1 < cfg.unet_steps:
            snapshot(ema, step + 1)
    unet.eval().requires_grad_(False)
    return ema


def train_segmenters(base: BaseComponents, cfg: PretrainConfig) -> tuple[dict[str, torch.nn.Module], dict]:
    """One reference segmenter per category (on this VAE's decodings); returns the modules and their meta."""
    from .alignment import SegmenterConfig, train_segmenter

    modules, meta = {}, {}
    for category in CATEGORIES:
        seg_cfg = SegmenterConfig(steps=cfg.segmenter_steps, seed=cfg.seed, resolution=cfg.resolution)
        model, info = train_segmenter(category, base.vae, seg_cfg)
        modules[f"segmenter.{category}"] = model
        meta[category] = {**info, "base_channels": seg_cfg.base_channels, "steps": seg_cfg.steps}
    return modules, meta


def pretrain_base(cfg: PretrainConfig, out_dir: str | Path, stages: tuple[str, ...] = STAGES) -> Path:
    """Run ``stages`` and write ``demo_base.safetensors`` (fp16) and ``demo_base.json`` to ``out_dir`` after each.

    A stage left out is taken from what ``out_dir`` already holds (e.g. ``("unet", "segmenter")`` reuses its
    VAE), so a long run can be split, and a stage redone, without redoing the others.
    """
    from .alignment import load_segmenter
    from .base import META_NAME, build_demo_structure, load_demo_base, read_meta, save_demo_base

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown pretraining stages {unknown}; choose from {STAGES}")
    previous = read_meta(out_dir) if (out_dir / META_NAME).is_file() and set(stages) != set(STAGES) else {}
    if previous and previous.get("config") != asdict(cfg):
        logger.warning("%s was made with other settings; the recorded config becomes this one", out_dir)
    meta = {
        "config": asdict(cfg),
        "times": dict(previous.get("times", {})),
        "final_losses": dict(previous.get("final_losses", {})),
        "segmenters": dict(previous.get("segmenters", {})),
        "stack": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    if "unet" not in stages and "step" in previous:
        # The UNet kept from out_dir is a snapshot of a longer run, taken at this step (see `train_unet`).
        meta["unet_snapshot_step"] = previous["step"]
    if "unet" not in stages and "unet_snapshot_step" in previous:
        meta["unet_snapshot_step"] = previous["unet_snapshot_step"]
    if "vae" in stages:
        base = build_demo_structure(seed=cfg.seed)
    else:
        base = load_demo_base(out_dir)
        if "unet" in stages:
            base.unet = (
                load_demo_base(cfg.unet_init) if cfg.unet_init else build_demo_structure(seed=cfg.seed)
            ).unet
    segmenters = {}
    if "segmenter" not in stages and previous.get("segmenters"):
        segmenters = {f"segmenter.{c}": load_segmenter(c, out_dir) for c in previous["segmenters"]}

    def stage(name: str, run) -> None:
        log: list[dict] = []
        started = time.perf_counter()
        cpu = time.process_time()
        run(log)
        meta["times"][f"{name}_s"] = round(time.perf_counter() - started, 1)
        meta["times"][f"{name}_cpu_s"] = round(time.process_time() - cpu, 1)
        values = [r["loss"] for r in log][-100:]
        if values:
            meta["final_losses"][name] = round(float(np.mean(values)), 5)
        save_demo_base(base, out_dir, meta, segmenters)

    if "vae" in stages:
        stage("vae", lambda log: train_vae(base, cfg, log))
    if "unet" in stages:

        def snapshot(ema: torch.nn.Module, step: int) -> None:
            # A usable base mid-run in out_dir/snapshot (the final weights replace nothing until the end).
            save_demo_base(replace(base, unet=ema), out_dir / "snapshot", {**meta, "step": step}, segmenters)

        stage("unet", lambda log: setattr(base, "unet", train_unet(base, cfg, log, snapshot)))
    if "segmenter" in stages:

        def run_segmenters(log: list[dict]) -> None:
            modules, info = train_segmenters(base, cfg)
            segmenters.update(modules)
            meta["segmenters"] = info

        stage("segmenter", run_segmenters)
    return out_dir


@torch.no_grad()
def preview_grid(base: BaseComponents, n: int = 8, steps: int = 30, guidance: float = 2.0, seed: int = 0):
    """A picture to judge the base by eye. Rows: real normal renders; their VAE reconstructions; renders of
    the test defect types (never seen in pretraining); their reconstructions; then the UNet's samples for
    each prompt ("pill", "weave", "mark"), PNDM with classifier-free guidance."""
    from ..report import image_grid

    normals = [
        synthetic_sample(c, "preview", "good", i, seed, 64).image for c in CATEGORIES for i in range(n // 2)
    ]
    kinds = [(c, k) for c in CATEGORIES for k in DEFECT_TYPES[c]]
    defects = [synthetic_sample(c, "preview", k, 0, seed, 64).image for c, k in kinds][:n]
    rows = []
    for real in (np.stack(normals), np.stack(defects)):
        rec = base.vae.decode(base.vae.encode(_to_tensor(real)).latent_dist.mean).sample
        rows += [real, _to_uint8(rec)]
    scale = base.vae.config.scaling_factor
    text = encode_prompts(base.tokenizer, base.text_encoder, [*PROMPTS, ""])
    sched = base.scheduler
    size = base.unet.config.sample_size
    for pi in range(len(PROMPTS)):
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(seed + pi)
        z = torch.randn((n, 4, size, size), generator=gen)
        emb = torch.cat([text[-1:].expand(n, -1, -1), text[pi : pi + 1].expand(n, -1, -1)])
        for t in sched.timesteps:
            u, c = base.unet(torch.cat([z, z]), t, emb).sample.chunk(2)
            z = sched.step(u + guidance * (c - u), t, z).prev_sample
        rows.append(_to_uint8(base.vae.decode(z / scale).sample))
    return image_grid([im for row in rows for im in row], n)
