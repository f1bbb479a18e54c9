"""Target regions for placing a defect on a normal image, and the area a placed pair may change.

A *region* is where the defect should go (bool H x W). The *allowed area* is the region grown by a seam band
of ``band`` pixels: inside it the generated image replaces the normal one, blended over the band
(`blend_weights`), and outside it the normal image is kept bit for bit.

``--where auto`` draws regions from the few-shot masks the adapters were trained on (`RegionSampler`): one
mask's shape, rotated by a multiple of 90 degrees, maybe flipped, scaled so its area lies within the few-shot
masks' range, grown by a margin (the defect the adapters draw is not the mask's exact shape), and put at a
random position where it lies wholly on the object (the foreground estimate) and on the image. Every choice
comes from the pair's seed and is recorded, so a region can be made again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from ..data.images import IMAGE_EXTENSIONS, load_mask
from ..errors import InputError

# Tries at a random position before the scale is lowered (a small object leaves few places).
POSITION_TRIES = 200
SCALE_STEPS = (1.0, 0.8, 0.6, 0.45, 0.3)


def allowed_area(region: np.ndarray, band: int) -> np.ndarray:
    """The region grown by ``band`` pixels (a disc), clipped to the image: what a placed pair may change."""
    if band <= 0:
        return region.copy()
    distance = ndimage.distance_transform_edt(~region)
    return distance <= band


def blend_weights(region: np.ndarray, band: int) -> np.ndarray:
    """Per-pixel weight of the generated image (float H x W): 1 in the region, falling linearly to 0 at the
    band's outer edge, exactly 0 beyond it (so those pixels are the normal image's own)."""
    if band <= 0:
        return region.astype(np.float32)
    distance = ndimage.distance_transform_edt(~region)
    weights = np.clip(1.0 - distance / (band + 1), 0.0, 1.0).astype(np.float32)
    weights[distance > band] = 0.0
    return weights


def composite(generated: np.ndarray, normal: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3: the generated image where ``weights`` is 1, the normal image where it is 0 (those
    pixels copied, not recomputed), a rounded blend between."""
    blended = weights[..., None] * generated.astype(np.float32) + (1 - weights[..., None]) * normal
    out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    keep = weights == 0
    out[keep] = normal[keep]
    return out


def load_region(
    path: str | os.PathLike, size: tuple[int, int], own_size: tuple[int, int] | None = None
) -> np.ndarray:
    """A user's region mask (any image, non-zero = region) at ``size`` (W, H), the generation size; refuses
    an empty one. A region drawn at the normal image's ``own_size`` (W, H) is resized to ``size`` as the image
    is (bilinear, thresholded at half), which lets a user paint on the image as it is on disk."""
    region = load_mask(path)
    got = (region.shape[1], region.shape[0])
    if got != size and got == own_size:
        region = _resize_mask(region, size)
    elif got != size:
        sizes = f"{size[0]}x{size[1]}" if own_size in (None, size) else f"{own_size[0]}x{own_size[1]}"
        raise InputError(f"{path}: region of {got[0]}x{got[1]} px, the normal image is {sizes}")
    if not region.any():
        raise InputError(f"{path}: the region is empty (no non-zero pixel)")
    return region


def region_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``--where DIR``: region masks by file stem (``<stem>.png`` or ``<stem>_mask.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--where {folder}: not a folder of region masks (or 'auto')")
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            found[path.stem.removesuffix("_mask")] = path
    if not found:
        raise InputError(f"--where {folder}: no region mask images there")
    return found


@dataclass(frozen=True)
class DrawnRegion:
    region: np.ndarray  # bool H x W
    spec: dict[str, Any]  # how it was made (recorded per pair)


class RegionSampler:
    """Regions drawn from few-shot mask shapes (see the module docstring)."""

    def __init__(
        self, shapes: list[np.ndarray], names: list[str], size: tuple[int, int], margin: float = 0.5
    ):
        if not shapes:
            raise InputError("no few-shot masks to draw regions from")
        self.size = size  # (W, H)
        self.names = names
        self.shapes = [_crop(_resize_mask(s, size)) for s in shapes]
        empty = [n for n, s in zip(names, self.shapes) if not s.any()]
        if empty:
            raise InputError(f"few-shot mask {empty[0]}: empty at {size[0]}x{size[1]} px")
        areas = [int(s.sum()) for s in self.shapes]
        self.area_range = (min(areas), max(areas))
        self.margin = margin

    def draw(self, rng: np.random.Generator, foreground: np.ndarray | None) -> DrawnRegion:
        """One region on the object (``foreground``; None: the whole image), or InputError if none fits."""
        w, h = self.size
        on = np.ones((h, w), bool) if foreground is None else foreground
        if not on.any():
            raise InputError("the foreground estimate is empty: no object to place a defect on")
        index = int(rng.integers(len(self.shapes)))
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        shape = np.rot90(self.shapes[index], turns)
        shape = shape[:, ::-1] if flip else shape
        lo, hi = self.area_range
        target = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        base_scale = np.sqrt(target / shape.sum())
        for step in SCALE_STEPS:
            scale = base_scale * step
            grown = _grow(_scale(shape, scale), self.margin)
            gh, gw = grown.shape
            if gh > h or gw > w:
                continue
            for _ in range(POSITION_TRIES):
                y, x = int(rng.integers(h - gh + 1)), int(rng.integers(w - gw + 1))
                if on[y : y + gh, x : x + gw][grown].all():
                    region = np.zeros((h, w), bool)
                    region[y : y + gh, x : x + gw] = grown
                    spec = {
                        "kind": "auto",
                        "shape": self.names[index],
                        "rot90": turns,
                        "flip": flip,
                        "scale": round(scale, 4),
                        "top_left": [y, x],
                        "area": int(region.sum()),
                    }
                    return DrawnRegion(region, spec)
        raise InputError(
            "no region drawn from the few-shot masks fits on the object of this normal image (even at "
            f"{SCALE_STEPS[-1]:.0%} of the few-shot size): check the foreground estimate, or give --where DIR"
        )


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == (size[1], size[0]):
        return mask.astype(bool)
    levels = Image.fromarray(mask.astype(np.float32)).resize(size, Image.BILINEAR)
    return np.asarray(levels) >= 0.5


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _scale(shape: np.ndarray, scale: float) -> np.ndarray:
    h, w = shape.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    scaled = np.asarray(Image.fromarray(shape.astype(np.float32)).resize(size, Image.BILINEAR)) >= 0.5
    return scaled if scaled.any() else np.ones((1, 1), bool)


def _grow(shape: np.ndarray, margin: float) -> np.ndarray:
    """The shape grown by ``margin`` times its equivalent radius (at least 2 px), padded to fit."""
    radius = np.sqrt(shape.sum() / np.pi)
    pad = max(2, int(round(margin * radius)))
    padded = np.pad(shape, pad)
    return ndimage.distance_transform_edt(~padded) <= pad
