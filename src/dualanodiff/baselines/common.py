"""Loading and resizing shared by the baseline generators."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.images import load_mask, load_rgb
from ..data.mvtec import DefectSample

Size = tuple[int, int]  # (W, H), PIL's order


def as_size(resolution: int | Size | None) -> Size | None:
    """``None`` (native size), an int (square) or ``(W, H)``."""
    if resolution is None:
        return None
    if isinstance(resolution, int):
        return (resolution, resolution)
    w, h = resolution
    return (int(w), int(h))


def resize_rgb(image: np.ndarray, size: Size) -> np.ndarray:
    """Bicubic resize of a uint8 (H, W, 3) image to ``size`` = (W, H); a no-op at that size already."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def load_normal(sample: DefectSample, size: Size | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A normal image (resized to ``size`` if given) and its object foreground mask, or None without one."""
    image = load_rgb(sample.image)
    if size is not None:
        image = resize_rgb(image, size)
    fg = None
    if sample.foreground is not None:
        fg = load_mask(sample.foreground, size=(image.shape[1], image.shape[0]))
    return image, fg
