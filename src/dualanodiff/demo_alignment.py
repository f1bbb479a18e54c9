"""Mask alignment of generated pairs: does the generated mask cover the defect in the generated image?

A defect segmenter (DRAEM's discriminative U-Net, focal loss) is trained on *real* synthetic defect images,
rendered fresh by the generator (split name ``"segmenter"``: disjoint from the demo dataset), then run on the
generated whole images; its binarised prediction is compared with the generated masks by IoU. The same
segmenter on the real test images gives the ceiling of this measure, and Crop&Paste pairs (aligned by
construction) a second reference. The binarisation threshold is chosen on held-out real renders (split
``"segmenter-val"``): focal loss keeps the defect probability low on small defects, so a fixed 0.5 marks
almost nothing (measured: IoU 0 even on real images). Written here because no library ships a reference
segmenter for this data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data.generated import GeneratedPair
from .data.images import load_mask, load_rgb
from .evaluate.unet import DiscriminativeSubNetwork, draem_weights_init, focal_loss
from .progress import progress_bar
from .synthetic import DEFECT_TYPES, synthetic_sample


@dataclass
class SegmenterConfig:
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    base_channels: int = 16
    images_per_type: int = 48
    seed: int = 0
    thresholds: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def train_segmenter(
    category: str, resolution: int, cfg: SegmenterConfig, progress: bool = True
) -> DiscriminativeSubNetwork:
    """A defect segmenter for ``category``, trained on fresh real renders of every defect type (with flips)."""
    images, masks = [], []
    for kind in DEFECT_TYPES[category]:
        for i in range(cfg.images_per_type):
            s = synthetic_sample(category, "segmenter", kind, i, cfg.seed, resolution)
            images.append(s.image)
            masks.append(s.mask)
    for i in range(cfg.images_per_type):  # normal images too, so it learns to say "nothing here"
        s = synthetic_sample(category, "segmenter", "good", i, cfg.seed, resolution)
        images.append(s.image)
        masks.append(s.mask)
    x_all, m_all = _to_input(np.stack(images)), torch.from_numpy(np.stack(masks)).float()[:, None]
    gen = torch.Generator().manual_seed(cfg.seed)
    model = DiscriminativeSubNetwork(base_channels=cfg.base_channels)
    draem_weights_init(model, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in progress_bar(range(cfg.steps), desc="training the reference segmenter", disable=not progress):
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
    model.threshold = _calibrate(model, category, resolution, cfg)
    return model


def _calibrate(
    model: DiscriminativeSubNetwork, category: str, resolution: int, cfg: SegmenterConfig
) -> float:
    """The threshold with the best mean IoU on held-out real defect renders."""
    val = [
        synthetic_sample(category, "segmenter-val", kind, i, cfg.seed, resolution)
        for kind in DEFECT_TYPES[category]
        for i in range(max(2, cfg.images_per_type // 4))
    ]
    probs = segment(model, [s.image for s in val], threshold=None)
    scores = [np.mean([iou(p > t, s.mask) for p, s in zip(probs, val)]) for t in cfg.thresholds]
    return float(cfg.thresholds[int(np.argmax(scores))])


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


def mask_alignment(
    model: DiscriminativeSubNetwork, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> dict[str, float]:
    """Mean and median IoU between the segmenter's masks of ``images`` and the given ``masks``."""
    if not images:
        return {"iou_mean": float("nan"), "iou_median": float("nan"), "n": 0}
    pred = segment(model, images, getattr(model, "threshold", 0.5))
    scores = [iou(p, np.asarray(m, bool)) for p, m in zip(pred, masks)]
    return {
        "threshold": getattr(model, "threshold", 0.5),
        "iou_mean": round(float(np.mean(scores)), 4),
        "iou_median": round(float(np.median(scores)), 4),
        "n": len(scores),
    }


def pairs_alignment(model: DiscriminativeSubNetwork, pairs: Sequence[GeneratedPair]) -> dict[str, float]:
    """`mask_alignment` of generated pairs (read from disk)."""
    images = [load_rgb(p.image) for p in pairs]
    masks = [load_mask(p.mask, size=(im.shape[1], im.shape[0])) for p, im in zip(pairs, images)]
    return mask_alignment(model, images, masks)
