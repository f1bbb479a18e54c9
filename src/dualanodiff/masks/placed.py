"""The mask of a pair placed on a normal image.

Rule: a pixel is defect where (1) it lies in the allowed area (region plus seam band), (2) the part branch
marks a defect there (the part image's own mask, by the run's mask method), and (3) the placed image departs
from the normal image there (the per-pixel colour distance, smoothed over 3 x 3, at least ``departure`` or
half of its peak inside the allowed area, whichever is larger, then grown by one pixel).

Why: a free pair's mask comes from the part image alone, and the part may mark a blob the whole image does
not show, or the whole image may draw its defect a cell away. A placed pair has the normal image to compare
with, so the mask keeps only what both say: the part branch says *what* is a defect (the regenerated texture
around it is not), the departure from the normal image says *where it is visible*. (3) is cut at half its peak
for the same reason the grey-half-max method is: the edge of a blurred step lies at half its height. The
allowed area bounds it, so the mask can never leave the band.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .quality import MaskQuality, judge_mask

DEFAULT_DEPARTURE = 16.0  # uint8 levels: below this a change is VAE reconstruction noise, not a defect


def departure_map(image: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Per-pixel colour distance (max over channels, uint8 levels) of the placed image from the normal one,
    averaged over 3 x 3 so single-pixel noise does not count."""
    distance = np.abs(image.astype(np.float32) - normal.astype(np.float32)).max(-1)
    return ndimage.uniform_filter(distance, size=3, mode="nearest")


def placed_mask(
    part_mask: np.ndarray,
    image: np.ndarray,
    normal: np.ndarray,
    allowed: np.ndarray,
    departure: float = DEFAULT_DEPARTURE,
) -> np.ndarray:
    """The placed pair's mask (bool H x W) by the rule of the module docstring."""
    distance = departure_map(image, normal)
    inside = distance[allowed]
    peak = float(inside.max()) if inside.size else 0.0
    departs = distance >= max(departure, peak / 2)
    departs = ndimage.binary_dilation(departs, iterations=1)
    return part_mask.astype(bool) & departs & allowed


def part_outside_fraction(part_mask: np.ndarray, allowed: np.ndarray) -> float:
    """The share of the part branch's defect pixels that lie outside the allowed area (0 when none marked)."""
    marked = int(part_mask.sum())
    return float((part_mask & ~allowed).sum() / marked) if marked else 0.0


# A placed pair whose part branch marks more than this share of its defect outside the allowed area is
# rejected: the part drew its defect elsewhere, so what the whole image shows in the region is not it.
MAX_PART_OUTSIDE = 0.5
OUTSIDE_REASON = "the part branch drew its defect mostly outside the region"
# The start of the reason of a pair whose sampler overflowed (`generate`); `masks` never revives such a pair.
NONFINITE_REASON = "the sampler produced non-finite values"


def placed_outcome(
    part_mask: np.ndarray,
    image: np.ndarray,
    normal: np.ndarray,
    allowed: np.ndarray,
    departure: float,
    max_area_fraction: float,
    min_area_fraction: float | None = None,
) -> tuple[np.ndarray, MaskQuality, float]:
    """A placed pair's mask, its verdict (the area gate, then the part-outside rule) and the part's share
    outside the allowed area: one rule for `generate` and `masks`."""
    mask = placed_mask(part_mask, image, normal, allowed, departure)
    limits = {} if min_area_fraction is None else {"min_area_fraction": min_area_fraction}
    verdict = judge_mask(mask, max_area_fraction=max_area_fraction, **limits)
    outside = part_outside_fraction(part_mask, allowed)
    if verdict.kept and outside > MAX_PART_OUTSIDE:
        verdict = verdict._replace(kept=False, reason=OUTSIDE_REASON)
    return mask, verdict, outside
