"""Mask alignment of generated pairs: does the generated mask cover the defect in the generated image?

The measure: a reference segmenter finds the defect in each generated whole image, and the IoU of its mask
with the pair's generated mask says whether the two branches drew the same defect at the same place.

Why a segmenter, and why trained this way. The other direct measure, the generated image against the same
seed's image without the defect, needs a defect-free twin that the sampler does not give: the adapters change
the whole denoising trajectory, so the twin differs everywhere, not only at the defect. The segmenter is
DRAEM's discriminative U-Net (the downstream detector's architecture), trained on fresh *real* renders of
every defect type of the category and of normal images (split ``segmenter``, disjoint from the dataset),
passed through the demo base's VAE first: every generated image is a VAE decoding, and a segmenter trained on
crisp renders misses the same defects once they are decoded (measured on the previous demo base). Its
threshold is chosen on held-out renders (split ``segmenter-val``), and its IoU on the real test images against
their ground truth is the ceiling of the measure. It is trained once, with the base, by
``scripts/pretrain_demo_base.py``, and ships with it (``segmenter.<category>.*`` in the demo assets).
Written here because no library ships a segmenter for this data.

On images unlike the renders it learned from, the segmenter also finds false defects (on this base's blurred
generated pills: all of them, docs/demo.md), so a second measure needs no model at all: the part branch draws
the defect as it appears in the whole image, so where a pair is aligned, the whole image under the mask looks
like the part's defect pixels more than under the same mask moved elsewhere (`part_match_rank`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.generated import GeneratedPair
from ..data.images import load_mask, load_rgb
from ..evaluate.unet import DiscriminativeSubNetwork, draem_weights_init, focal_loss
from ..progress import progress_bar
from ..synthetic import DEFECT_TYPES, synthetic_sample


@dataclass
class SegmenterConfig:
    steps: int = 1200
    batch_size: int = 16
    lr: float = 1e-3
    base_channels: int = 8  # 0.45 M parameters: small enough to ship with the base
    images_per_type: int = 64
    seed: int = 0
    resolution: int = 64
    thresholds: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def through_vae(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 images encoded (posterior mean) and decoded by ``vae``: what a generated image looks like."""
    out = []
    for i in range(0, len(images), batch):
        x = _to_input(images[i : i + batch]) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _renders(category: str, split: str, per_type: int, cfg: SegmenterConfig) -> tuple[np.ndarray, np.ndarray]:
    samples = [
        synthetic_sample(category, split, kind, i, cfg.seed, cfg.resolution)
        for kind in (*DEFECT_TYPES[category], "good")
        for i in range(per_type)
    ]
    return np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])


def train_segmenter(
    category: str, vae, cfg: SegmenterConfig, progress: bool = True
) -> tuple[DiscriminativeSubNetwork, dict[str, float]]:
    """A defect segmenter for ``category`` trained on VAE-decoded renders (with flips); returns it with its
    calibration: a threshold and held-out IoU per defect type, and their median threshold (``model.threshold``)."""
    images, masks = _renders(category, "segmenter", cfg.images_per_type, cfg)
    x_all = _to_input(through_vae(vae, images))
    m_all = torch.from_numpy(masks).float()[:, None]
    gen = torch.Generator().manual_seed(cfg.seed)
    model = DiscriminativeSubNetwork(base_channels=cfg.base_channels)
    draem_weights_init(model, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in progress_bar(range(cfg.steps), desc=f"reference segmenter ({category})", disable=not progress):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        x, m = x_all[idx], m_all[idx]
        if torch.rand(1, generator=gen) < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        if torch.rand(1, generator=gen) < 0.5:
            x, m = x.flip(-2), m.flip(-2)
        loss = focal_loss(torch.softmax(model(x), 1), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    # Thresholds: per defect type, the best mean IoU on held-out renders of that type. Focal loss keeps the
    # defect probability low on small defects, so a fixed 0.5 marks too little, and how low differs by type.
    per_type = max(4, cfg.images_per_type // 4)
    val_images, val_masks = _renders(category, "segmenter-val", per_type, cfg)
    probs = segment(model, through_vae(vae, val_images), threshold=None)
    info: dict = {"thresholds": {}, "val_iou_mean": {}}
    for k, kind in enumerate(DEFECT_TYPES[category]):
        rows = slice(k * per_type, (k + 1) * per_type)
        scores = [
            np.mean([iou(p > t, m) for p, m in zip(probs[rows], val_masks[rows])]) for t in cfg.thresholds
        ]
        best = int(np.argmax(scores))
        info["thresholds"][kind] = float(cfg.thresholds[best])
        info["val_iou_mean"][kind] = round(float(scores[best]), 4)
    model.threshold = float(np.median(list(info["thresholds"].values())))
    info["threshold"] = model.threshold
    return model, info


def load_segmenter(category: str, folder=None, anomaly: str | None = None) -> DiscriminativeSubNetwork:
    """The shipped reference segmenter of ``category`` (from the demo assets), with its ``threshold``: the one
    calibrated for ``anomaly`` when given."""
    from ..errors import InputError
    from .base import load_weights, read_meta

    meta = read_meta(folder)
    info = meta.get("segmenters", {}).get(category)
    if info is None:
        raise InputError(f"the demo assets hold no reference segmenter for {category!r}")
    model = DiscriminativeSubNetwork(base_channels=int(info["base_channels"]))
    load_weights(model, f"segmenter.{category}", folder)
    model.eval()
    model.threshold = float(info.get("thresholds", {}).get(anomaly, info["threshold"]))
    return model


@torch.no_grad()
def segment(
    model: DiscriminativeSubNetwork, images: Sequence[np.ndarray], threshold: float | None = 0.5
) -> np.ndarray:
    """Binary masks (N, H, W) where the defect probability exceeds ``threshold`` (None: the probabilities)."""
    out = []
    for i in range(0, len(images), 32):
        x = _to_input(np.stack(images[i : i + 32]))
        prob = torch.softmax(model(x), 1)[:, 1]
        out.append((prob if threshold is None else prob > threshold).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1, 1), bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


MATCH_SHIFTS = [(dy, dx) for dy in (-16, 0, 16) for dx in (-16, 0, 16) if (dy, dx) != (0, 0)]


def part_match_rank(image: np.ndarray, part: np.ndarray, mask: np.ndarray) -> float | None:
    """Does ``image`` look like ``part`` under ``mask`` more than under the mask moved by 16 px in each of 8
    directions? The share of those moves that match worse (mean absolute difference): 1.0 when the mask's place
    matches best; near chance for an unrelated image. None for an empty mask."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    image, part = image.astype(float), part.astype(float)

    def distance(dy: int, dx: int) -> float:
        moved = np.roll(image, (-dy, -dx), axis=(0, 1))  # the image content at the moved mask's place
        return float(np.abs(moved[mask] - part[mask]).mean())

    here = distance(0, 0)
    return float(np.mean([distance(dy, dx) > here for dy, dx in MATCH_SHIFTS]))


def cut_out(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The part image of a pair that has none (a real image, a Crop&Paste pair): the defect on mid-grey."""
    return np.where(np.asarray(mask, bool)[..., None], image, np.uint8(128))


def mask_alignment(
    model: DiscriminativeSubNetwork,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    parts: Sequence[np.ndarray | None] | None = None,
) -> dict:
    """Mean and median IoU between the segmenter's masks of ``images`` and the given ``masks``, and each IoU;
    the median part-match rank and the share of pairs whose mask's place matches best (``parts``: the pairs'
    part images; None, or a None entry, cuts the part out of the image)."""
    if not images:
        return {"iou_mean": float("nan"), "iou_median": float("nan"), "n": 0, "ious": []}
    pred = segment(model, images, getattr(model, "threshold", 0.5))
    scores = [iou(p, np.asarray(m, bool)) for p, m in zip(pred, masks)]
    parts = parts or [None] * len(images)
    ranks = [
        part_match_rank(im, cut_out(im, m) if part is None else part, m)
        for im, m, part in zip(images, masks, parts)
    ]
    ranks = [r for r in ranks if r is not None]
    return {
        "threshold": getattr(model, "threshold", 0.5),
        "iou_mean": round(float(np.mean(scores)), 4),
        "iou_median": round(float(np.median(scores)), 4),
        "n": len(scores),
        "ious": [round(s, 4) for s in scores],
        "part_match_median": round(float(np.median(ranks)), 4) if ranks else None,
        "part_match_best_share": round(float(np.mean([r == 1.0 for r in ranks])), 4) if ranks else None,
    }


def pairs_alignment(model: DiscriminativeSubNetwork, pairs: Sequence[GeneratedPair]) -> dict:
    """`mask_alignment` of generated pairs (read from disk)."""
    images = [load_rgb(p.image) for p in pairs]
    masks = [load_mask(p.mask, size=(im.shape[1], im.shape[0])) for p, im in zip(pairs, images)]
    parts = [None if p.part is None else load_rgb(p.part) for p in pairs]
    return mask_alignment(model, images, masks, parts)
