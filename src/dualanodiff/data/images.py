"""Read images and masks from disk into the project's two in-memory forms.

Images become ``uint8 (H, W, 3)`` RGB and masks ``bool (H, W)`` whatever the file holds
(grayscale, RGBA, palette, 16-bit), so nothing downstream has to care about PNG modes.
Files that cannot be decoded completely (truncated, not an image) raise :class:`InputError`
naming the file, instead of a PIL traceback halfway through a training run.

The mask policy, in this one place for every reader (training, ground truth, generated folders,
baselines): a pixel is set where its value reaches half the range of the file's bit depth (any channel
of a colour mask); a file whose largest value is 1 holds 0/1 labels (a common export format) and its
1s are set. A mask that belongs to an image must have the image's size: :func:`load_mask_for` refuses
another size, naming both files, instead of stretching the mask onto the image.
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


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 (H, W, 3)`` at ``size`` (W, H), bilinear as `train` resizes its images (unchanged at that size):
    the one resize a placed pair's normal image gets, at generation and when `masks` re-reads it."""
    if image.shape[1::-1] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(W, H) of an image file from its header only, so checking thousands of files stays cheap."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def _mask_levels(path: str | os.PathLike) -> np.ndarray:
    """The mask as float32 (H, W) levels in [0, 1]; a 0/1 label file becomes 0.0/1.0."""
    im = _open_fully(path)
    unit = _to_unit_gray_or_rgb(im)
    if unit.ndim == 3:
        unit = unit.max(axis=-1)
    if im.mode not in ("1", "F"):  # bilevel and float files cannot hold a 0/1 label ambiguity
        one_level = 1.0 / (65535.0 if im.mode == "I" or im.mode.startswith("I;16") else 255.0)
        top = float(unit.max(initial=0.0))
        if 0.0 < top < 1.5 * one_level:  # the largest value is 1: labels 0/1, not 0/255
            unit = (unit > 0).astype(np.float32)
    return unit


def _binarise(levels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize the levels bilinearly *before* thresholding (thin structures survive like they do in a
    resized image), then set what reaches half range."""
    if size is not None:
        w, h = int(size[0]), int(size[1])
        if (levels.shape[1], levels.shape[0]) != (w, h):
            levels = np.asarray(Image.fromarray(levels.astype(np.float32)).resize((w, h), Image.BILINEAR))
    return levels >= 0.5


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a mask as ``bool (H, W)`` by the mask policy above; ``size=(W, H)`` resizes it.

    For the mask of a given image use :func:`load_mask_for`, which checks the sizes agree.
    """
    return _binarise(_mask_levels(path), size)


def load_mask_for(
    mask_path: str | os.PathLike,
    image_path: str | os.PathLike,
    image_shape: tuple[int, ...] | None = None,
    size: tuple[int, int] | None = None,
    label: str = "mask",
) -> np.ndarray:
    """The ``bool (H, W)`` mask of an image, refused with an :class:`InputError` naming both files when
    its size differs from the image's (``image_shape`` = the loaded image's shape, else read from the
    file's header). ``size=(W, H)`` then resizes mask and image alike, as the caller does with the image.
    """
    levels = _mask_levels(mask_path)
    h, w = image_shape[:2] if image_shape is not None else image_size(image_path)[::-1]
    if levels.shape != (h, w):
        raise InputError(
            f"{mask_path}: {label} size {levels.shape[1]}x{levels.shape[0]} differs from image "
            f"{image_path} size {w}x{h} (a mask must have its image's size)"
        )
    return _binarise(levels, size)
