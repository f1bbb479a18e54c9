"""Read images and masks from disk into the project's two in-memory forms.

Images become ``uint8 (H, W, 3)`` RGB and masks ``bool (H, W)`` whatever the file holds
(grayscale, RGBA, palette, 16-bit), so nothing downstream has to care about PNG modes.
Files that cannot be decoded completely (truncated, not an image) raise :class:`InputError`
naming the file, instead of a PIL traceback halfway through a training run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Errors PIL raises for undecodable files: UnidentifiedImageError and "image file is truncated"
# are OSErrors, a broken PNG chunk is a SyntaxError, a short zlib stream a ValueError / EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _open_fully(path: str | os.PathLike) -> Image.Image:
    """Open and decode the whole file now (PIL is lazy; truncation only shows on ``load``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            # Keep a decoded copy so the file handle can close.
            return im.copy()
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def _to_unit_gray_or_rgb(im: Image.Image) -> np.ndarray:
    """Pixel values scaled to [0, 1] float32: (H, W) for single-channel modes, (H, W, C) otherwise.

    16-bit and 32-bit integer modes are scaled by 65535 (PNG's ``I`` mode holds 16-bit data);
    float mode ``F`` is taken as [0, 1] when it fits there, else as [0, 255].
    """
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        return (np.clip(arr, 0, 65535) / 65535.0).astype(np.float32)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        scale = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) / scale, 0.0, 1.0).astype(np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode not in ("RGB", "RGBA", "LA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if im.mode in ("RGBA", "LA"):
        arr = arr[..., :-1]  # the alpha channel carries no colour; dropped like PIL's convert("RGB")
    return arr


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Load an image as ``uint8 (H, W, 3)`` RGB; gray, RGBA, palette and 16-bit inputs are converted."""
    im = _open_fully(path)
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode in ("L", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    unit = _to_unit_gray_or_rgb(im)
    if unit.ndim == 2:
        unit = np.repeat(unit[..., None], 3, axis=-1)
    elif unit.shape[-1] == 1:
        unit = np.repeat(unit, 3, axis=-1)
    return np.rint(unit * 255.0).astype(np.uint8)


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a mask as ``bool (H, W)``, set where the value reaches half the dtype range.

    Colour masks count a pixel as set when any channel reaches half range. ``size=(W, H)``
    resizes the grey values bilinearly *before* binarising, so thin structures survive
    like they do for a resized image.
    """
    unit = _to_unit_gray_or_rgb(_open_fully(path))
    if unit.ndim == 3:
        unit = unit.max(axis=-1)
    if size is not None:
        w, h = int(size[0]), int(size[1])
        if (unit.shape[1], unit.shape[0]) != (w, h):
            unit = np.asarray(Image.fromarray(unit.astype(np.float32)).resize((w, h), Image.BILINEAR))
    return unit >= 0.5
