"""Generic marks: the demo base's stand-in for the breadth of Stable Diffusion's training images.

SD 1.5 has seen every kind of blob, scribble, dot, smudge and texture, on objects and on plain backgrounds,
but never one factory's defect types; that breadth is why a few images and small adapters suffice to teach it
a new defect. The demo base gets the same kind of prior from these marks: random shapes (blobs, strokes, dot
clusters, ellipses, bars) filled with random flat colours, two-colour textures, or a darkening or lightening
of what lies below, at random opacity, painted flat over a normal image or on a plain canvas (mid-grey, the part
branch's canvas, or a random colour). They are painted *over* the image, not rendered into its scene:
no mark follows the surface's shading, shows what lies behind, or follows the object's outline, as the
dataset's defects do (`dualanodiff.synthetic`), so the base knows marks in general but not the test types.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..synthetic.common import blob_polygon, clip_to_uint8, draw_mask, hsv, smooth_noise


def _shape(rng: np.random.Generator, res: int) -> np.ndarray:
    centre = rng.uniform(0.1, 0.9, size=2) * res
    kind = rng.choice(["blob", "stroke", "dots", "ellipse", "bar"], p=[0.35, 0.3, 0.1, 0.15, 0.1])
    if kind == "blob":
        radius = rng.uniform(0.025, 0.16) * res
        return draw_mask(
            res, polygons=[blob_polygon(rng, centre, radius, rng.uniform(0.05, 0.5), rng.uniform(1, 3))]
        )
    if kind == "stroke":
        pts = [centre]
        step = rng.uniform(0.02, 0.06) * res
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 12))):
            heading += rng.normal(0, rng.uniform(0.05, 0.9))
            pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
        width = int(rng.integers(1, max(2, res // 20) + 1))
        return draw_mask(res, lines=[np.asarray(pts)], width=width)
    if kind == "dots":
        spread = rng.uniform(0.03, 0.12) * res
        dots = [
            blob_polygon(rng, centre + rng.normal(0, spread, 2), rng.uniform(0.008, 0.025) * res, 0.1)
            for _ in range(int(rng.integers(3, 12)))
        ]
        return draw_mask(res, polygons=dots)
    if kind == "ellipse":
        return draw_mask(
            res, polygons=[blob_polygon(rng, centre, rng.uniform(0.03, 0.14) * res, 0.0, rng.uniform(1, 4))]
        )
    half = rng.uniform(0.03, 0.2, size=2) * res
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half + centre
    return draw_mask(res, polygons=[corners])


def _fill(rng: np.random.Generator, below: np.ndarray) -> np.ndarray:
    """The mark's colours over the whole image (float, 0-255); only its pixels are used."""
    res = below.shape[0]
    kind = rng.choice(["flat", "texture", "shade"], p=[0.45, 0.3, 0.25])
    if kind == "flat":
        colour = hsv(rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 1)) * 255
        return np.broadcast_to(colour, below.shape) + rng.normal(0, 3, below.shape)
    if kind == "texture":
        c1, c2 = (hsv(rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 1)) * 255 for _ in range(2))
        mix = np.clip(0.5 + 0.5 * smooth_noise(rng, (res, res), rng.uniform(0.4, 2.5)), 0, 1)[..., None]
        return c1 * mix + c2 * (1 - mix)
    factor = rng.uniform(0.25, 0.7) if rng.random() < 0.6 else rng.uniform(1.3, 1.8)
    return below.astype(np.float64) * factor


def add_marks(rng: np.random.Generator, image: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (uint8) with ``count`` random marks painted over it; returns (image, mask of marked pixels)."""
    out = image.astype(np.float64)
    mask = np.zeros(image.shape[:2], bool)
    for _ in range(count):
        region = _shape(rng, image.shape[0])
        if not region.any():
            continue
        alpha = rng.uniform(0.45, 1.0)
        if rng.random() < 0.3:  # soft-edged
            soft = ndimage.gaussian_filter(region.astype(float), rng.uniform(0.5, 1.5))
            region, weight = soft > 0.05, soft * alpha
        else:
            weight = region * alpha
        out = out * (1 - weight[..., None]) + _fill(rng, out) * weight[..., None]
        mask |= region
    result = clip_to_uint8(out)
    return result, mask & (result != image).any(-1)


def mark_canvas(rng: np.random.Generator, res: int, grey_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Marks on a plain canvas: exactly mid-grey (128) with probability ``grey_share``, else a random colour."""
    if rng.random() < grey_share:
        canvas = np.full((res, res, 3), 128, np.uint8)
    else:
        colour = hsv(rng.uniform(0, 1), rng.uniform(0, 0.8), rng.uniform(0.1, 0.95)) * 255
        canvas = clip_to_uint8(np.broadcast_to(colour, (res, res, 3)) + rng.normal(0, 2, (res, res, 3)))
    return add_marks(rng, canvas, int(rng.integers(1, 4)))
