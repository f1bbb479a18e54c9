"""Pictures of generated pairs for the pages: whole image, anomaly part and mask overlay side by side."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.generated import GeneratedPair
from ..data.images import load_mask, load_rgb
from ..report import image_grid, overlay_mask, to_pil


def pair_views(pair: GeneratedPair) -> list[np.ndarray]:
    """[whole image, anomaly part (black when the folder has none), mask overlaid in red] of one pair."""
    image = load_rgb(pair.image)
    mask = load_mask(pair.mask, size=(image.shape[1], image.shape[0]))
    part = load_rgb(pair.part) if pair.part else np.zeros_like(image)
    return [image, part, overlay_mask(image, mask)]


def verdict(pair: GeneratedPair) -> str:
    """``kept`` or ``rejected: <why>`` as the manifest says, with "by hand" when a person decided."""
    by_hand = " by hand" if pair.record.get("verdict_by_hand") else ""
    if pair.kept:
        return f"kept{by_hand}"
    reason = pair.record.get("reject_reason") or "rejected"
    return reason if by_hand else f"rejected: {reason}"


def triple_image(pair: GeneratedPair, side: int = 160) -> Image.Image:
    """One gallery picture of a pair: its three views enlarged to ``side`` pixels (nearest neighbour, so
    small images stay crisp)."""
    views = [to_pil(v).resize((side, side), Image.NEAREST) for v in pair_views(pair)]
    return image_grid(views, 3, pad=2)
