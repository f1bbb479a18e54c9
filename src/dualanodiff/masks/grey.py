"""Weight-free mask from an anomaly-part image: where it departs from mid-grey.

DualAnoDiff's part branch paints the defect on a flat mid-grey canvas (0 in [-1, 1], i.e. 127.5
in uint8), so the defect is simply everything that is not grey. No library does this exact
measurement, hence the few lines below; the clean-up is ``scipy.ndimage``.

Why these choices:

* Distance = largest absolute channel difference from grey, so a defect that differs in one
  channel only (a reddish stain) counts as much as a dark one.
* The distance map is median-filtered over a plus-shaped 5-pixel footprint, not Gaussian-blurred:
  the median removes isolated noisy pixels of the diffusion/VAE decoding but leaves edges where
  they are (a Gaussian of width sigma pushes the boundary of a high-contrast defect out by about
  sigma), and the plus shape, unlike a 3x3 square, keeps 1-pixel-wide scratches and corners.
  Filtering the *distance* (not the image) also keeps fine textures that alternate above and
  below grey from averaging back to grey.
* Default threshold 16 grey levels (of 255): the VAE decodes a flat grey canvas to within a few
  levels (measured: Gaussian noise of standard deviation 8 levels on a 512 x 512 grey canvas
  gives no mask pixel at all after the median, 10 levels gives 0.25%),
  while a defect visible to the eye differs from grey by 20 levels or more. Lower it for faint
  defects on a clean canvas, raise it if the canvas comes out blotchy.
* Components below ``min_area`` are dropped (stray specks) and holes are filled, because a
  defect region is a solid area even where its texture passes close to grey.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from ..errors import InputError

GREY_LEVEL = 127.5
DEFAULT_THRESHOLD = 16.0
DEFAULT_MIN_AREA = 0.0002  # fraction of the image: about 52 pixels at 512 x 512
_PLUS = ndimage.generate_binary_structure(2, 1)  # the pixel and its 4 neighbours

GreyLevel = float | Sequence[float] | Literal["auto"]


def _check_part(part: np.ndarray) -> np.ndarray:
    part = np.asarray(part)
    if part.ndim != 3 or part.shape[-1] != 3 or part.dtype != np.uint8:
        raise InputError(f"part image must be uint8 (H, W, 3), got {part.dtype} {tuple(part.shape)}")
    return part


def min_area_pixels(min_area: int | float, n_pixels: int) -> int:
    """``min_area`` as a pixel count: a float in [0, 1) is a fraction of the image, anything else pixels."""
    if min_area < 0:
        raise InputError(f"min_area must be >= 0, got {min_area}")
    if isinstance(min_area, float) and min_area < 1.0:
        return int(np.ceil(min_area * n_pixels))
    return int(min_area)


def canvas_level(part: np.ndarray) -> np.ndarray:
    """Per-channel median of the image: the canvas colour whenever the defect covers under half of it."""
    return np.median(_check_part(part).reshape(-1, 3), axis=0).astype(np.float32)


def grey_distance(part: np.ndarray, grey: GreyLevel = GREY_LEVEL) -> np.ndarray:
    """Per-pixel max-abs channel difference from ``grey`` (levels of 255), median-filtered (plus shape)."""
    part = _check_part(part)
    if isinstance(grey, str):
        if grey != "auto":
            raise InputError(f"grey level must be a number, one per channel, or 'auto', got {grey!r}")
        ref = canvas_level(part)
    else:
        ref = np.asarray(grey, dtype=np.float32).reshape(-1)
    dist = np.abs(part.astype(np.float32) - ref).max(axis=-1)
    return ndimage.median_filter(dist, footprint=_PLUS, mode="nearest")


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_pixels``."""
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def grey_mask(
    part: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: int | float = DEFAULT_MIN_AREA,
    fill_holes: bool = True,
    grey: GreyLevel = GREY_LEVEL,
) -> np.ndarray:
    """Mask (bool H x W) of the pixels of ``part`` that differ from mid-grey by more than ``threshold``.

    ``threshold`` is in grey levels of 255; ``min_area`` is a pixel count (int) or a fraction of the
    image (float below 1); ``grey`` is the canvas value, a scalar, one value per channel, or
    ``"auto"`` to take the image's per-channel median (for a generator whose canvas drifts off 127.5).
    """
    if threshold < 0:
        raise InputError(f"grey-mask threshold must be >= 0 (grey levels of 255), got {threshold}")
    return _cut(grey_distance(part, grey), threshold, min_area, fill_holes)


def half_max_mask(
    part: np.ndarray,
    floor: float = DEFAULT_THRESHOLD,
    min_area: int | float = DEFAULT_MIN_AREA,
    fill_holes: bool = True,
    grey: GreyLevel = "auto",
) -> np.ndarray:
    """Mask of ``part`` cut at half its peak distance from the canvas, never below ``floor`` (grey levels).

    A blurred step edge crosses half its height where the sharp edge was, so a defect softened by the VAE, or
    drawn soft by the part branch, is cut at its edge, where a fixed low threshold takes in the blur (on the
    demo's real holes passed through its VAE: median IoU with the true mask 0.93-0.95 against 0.72-0.77 at 16
    levels; docs/results/demo_alignment/half-max-masks-weave-hole.json). The peak is the maximum of the
    median-filtered distance map, which has no isolated pixels left. ``floor`` keeps a part with no defect, or a
    faint one, from being cut at half its noise. One threshold per image: a second, fainter defect below half
    the strongest one's peak is left out.
    """
    if floor < 0:
        raise InputError(f"grey-mask threshold must be >= 0 (grey levels of 255), got {floor}")
    dist = grey_distance(part, grey)
    return _cut(dist, max(float(floor), 0.5 * float(dist.max())), min_area, fill_holes)


def _cut(dist: np.ndarray, threshold: float, min_area: int | float, fill_holes: bool) -> np.ndarray:
    """The pixels above ``threshold``, small components dropped, holes filled."""
    mask = dist > threshold
    mask = remove_small_components(mask, min_area_pixels(min_area, mask.size))
    if fill_holes and mask.any():
        mask = ndimage.binary_fill_holes(mask)
    return mask
