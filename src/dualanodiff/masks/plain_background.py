"""Weight-free object foreground: everything that departs from a plain background.

MVTec AD photographs its objects on plain, nearly uniform backgrounds (black velvet, a light table), so the
background is what the image border shows: a colour that may drift slowly across the frame (lighting). The
foreground is then every pixel that differs from that background by more than its noise. No library offers
this exact estimate (saliency networks need weights), hence the few steps below; the clean-up is
``scipy.ndimage``.

1. Work at most 1024 px wide (MVTec AD's size; larger images are shrunk first, the mask scaled back).
2. Background model: per channel, a robust least-squares fit of ``a + b x + c y + d (x^2 + y^2)`` to the border
   pixels (a plain colour, a lighting gradient, a vignette), refitted once without the border pixels the object
   covers where it touches the frame.
3. Distance: largest absolute channel difference from the model, median-filtered (plus shape, as the grey mask).
4. Texture test: a border whose distances to the model are high or spread (median + 3 robust standard
   deviations above 24 grey levels) is no plain background.
5. Threshold: the border's own distance level plus 6 robust standard deviations, at least 12 grey levels.
6. Clean-up: opening (drops specks), components under 10% of the largest dropped, closing, holes filled.

``None`` means "no plain background": a texture (the border is not plain), or nothing or nearly everything
found. The BCM background is then the whole image, which METHOD section 5 prescribes for textures.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import InputError

WORKING_SIZE = 1024
BORDER_FRACTION = 0.03  # border ring width, fraction of the shorter side
MIN_THRESHOLD = 12.0  # grey levels of 255
NOISE_SIGMAS = 6.0
# A plain border: its distances to the model, median + 3 robust std, stay below this (levels). Measured on the
# synthetic data (scripts/foreground_study.py): plain backgrounds at most 12, the woven texture at least 43.
MAX_BORDER_ROUGHNESS = 24.0
MIN_COVERAGE, MAX_COVERAGE = 0.002, 0.95
_PLUS = ndimage.generate_binary_structure(2, 1)


def _border(h: int, w: int) -> np.ndarray:
    b = max(2, round(BORDER_FRACTION * min(h, w)))
    ring = np.zeros((h, w), bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    return ring


def _design(h: int, w: int) -> np.ndarray:
    """(H*W, 4) regressors of the background model: 1, x, y, x^2 + y^2 on [-1, 1] coordinates."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = 2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1
    return np.stack([np.ones_like(x), x, y, x * x + y * y], -1).reshape(-1, 4)


def _fit(design: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, pixels, rcond=None)
    return coef


def background_distance(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance map in grey levels, border mask) of ``image`` (uint8 H x W x 3) to its fitted plain background."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[:2]
    pixels = image.reshape(-1, 3).astype(np.float32)
    design = _design(h, w)
    border = _border(h, w).reshape(-1)
    coef = _fit(design[border], pixels[border])
    # Refit without the border pixels far from the first fit (an object touching the frame), if that leaves most.
    dist0 = np.abs(pixels[border] - design[border] @ coef).max(-1)
    inliers = dist0 <= np.median(dist0) + 3 * _robust_std(dist0) + 1.0
    if inliers.mean() > 0.5:
        coef = _fit(design[border][inliers], pixels[border][inliers])
    dist = np.abs(pixels - design @ coef).max(-1).reshape(h, w)
    return ndimage.median_filter(dist, footprint=_PLUS, mode="nearest"), border.reshape(h, w)


def _robust_std(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def estimate_foreground(image: np.ndarray) -> np.ndarray | None:
    """The object's mask (bool, the image's H x W), or None when the image has no plain background."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    small = image
    if max(h, w) > WORKING_SIZE:
        scale = WORKING_SIZE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    dist, border = background_distance(small)
    level, spread = float(np.median(dist[border])), _robust_std(dist[border])
    if level + 3 * spread > MAX_BORDER_ROUGHNESS:
        return None  # the border is not plain: a texture
    mask = dist > max(MIN_THRESHOLD, level + NOISE_SIGMAS * spread)
    mask = ndimage.binary_opening(mask, structure=_PLUS)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.1 * sizes.max()))
    # Closing on an edge-replicated copy, so an object that touches the frame keeps its pixels there.
    r = max(1, round(0.01 * max(small.shape[:2])))
    closed = ndimage.binary_closing(np.pad(mask, r, mode="edge"), structure=_PLUS, iterations=r)
    mask = ndimage.binary_fill_holes(closed[r:-r, r:-r])
    if not MIN_COVERAGE <= mask.mean() <= MAX_COVERAGE:
        return None
    if mask.shape != (h, w):
        up = Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.BILINEAR)
        mask = np.asarray(up) >= 0.5
    return mask
