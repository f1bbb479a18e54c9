"""Perlin-noise anomalies, DRAEM's augmentation (Zavrtanik et al., ICCV 2021), as a generation baseline.

Per pair: a 2D Perlin noise map with random scales ``2**a`` x ``2**b`` (a, b drawn from 0..5, DRAEM's
``torch.randint(0, 6)``), rotated by a random angle in [-90, 90], thresholded at 0.5, is the mask.
Inside it the normal image is blended with an anomaly-source texture: ``(1 - beta) * source + beta *
normal`` with ``beta`` uniform in [0, 0.8), so the source's opacity lies in (0.2, 1]. The source passes
through three of DRAEM's ten random colour/geometry augmentations. Outside the mask the normal image
is untouched. Unlike DRAEM, which keeps half its samples normal, every pair here is an anomaly; a pair
whose mask is empty (or, with an object foreground mask, empty inside the foreground) is re-drawn.

Anomaly source: images from a folder the user gives (DRAEM uses the DTD texture dataset); without
one, another normal image of the category cut into a grid of blocks that are shuffled and flipped,
so the texture is the object's own but its structure is out of place.

anomalib has this generator (``anomalib.data.utils.generators.perlin``), but it pulls in Lightning
and many heavy dependencies for 40 lines of numpy, so the noise and the augmentations are written
here by hand (numpy, scipy.ndimage and PIL only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from ..data.generated import GeneratedWriter
from ..data.images import is_image_file, load_rgb
from ..data.mvtec import DefectSample
from ..errors import InputError
from ..locking import output_lock
from ..progress import progress_bar
from .common import Size, as_size, load_normal, resize_rgb

METHOD = "perlin"
MIN_SCALE_EXP, MAX_SCALE_EXP = 0, 6  # DRAEM: 2 ** randint(0, 6), the upper bound exclusive
THRESHOLD = 0.5
MAX_BETA = 0.8
MAX_MASK_DRAWS = 100
SHUFFLE_GRID = 8


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6 * t - 15) * t + 10) * t**3


def rand_perlin_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2D gradient (Perlin) noise of ``shape`` with ``res`` lattice cells per axis, values in about [-1, 1].

    The same noise as DRAEM's ``rand_perlin_2d_np`` (random unit gradients on a (res+1)^2 lattice,
    quintic fade, scaled by sqrt(2)), vectorised by lattice lookup so any shape works, not only
    multiples of ``res``.
    """
    H, W = shape
    angles = 2 * math.pi * rng.random((res[0] + 1, res[1] + 1))
    grads = np.stack((np.cos(angles), np.sin(angles)), axis=-1)
    u = np.arange(H) * (res[0] / H)  # lattice coordinate of every row, then column
    v = np.arange(W) * (res[1] / W)
    i, j = u.astype(int), v.astype(int)
    fu, fv = (u - i)[:, None], (v - j)[None, :]

    def corner(di: int, dj: int) -> np.ndarray:
        g = grads[(i + di)[:, None], (j + dj)[None, :]]
        return g[..., 0] * (fu - di) + g[..., 1] * (fv - dj)

    tu, tv = _fade(fu), _fade(fv)
    n0 = corner(0, 0) + tu * (corner(1, 0) - corner(0, 0))
    n1 = corner(0, 1) + tu * (corner(1, 1) - corner(0, 1))
    return math.sqrt(2) * (n0 + tv * (n1 - n0))


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """DRAEM's anomaly mask: Perlin noise at random scales, rotated, thresholded at 0.5."""
    sy = 2 ** int(rng.integers(MIN_SCALE_EXP, MAX_SCALE_EXP))
    sx = 2 ** int(rng.integers(MIN_SCALE_EXP, MAX_SCALE_EXP))
    noise = rand_perlin_2d(shape, (sy, sx), rng)
    angle = float(rng.uniform(-90, 90))
    noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return noise > THRESHOLD, {"perlin_res": [sy, sx], "rotation": round(angle, 3)}


# DRAEM's randAugmenter, on PIL/numpy instead of imgaug: three of these ten, without replacement.
def _gamma(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = rng.uniform(0.5, 2.0, size=3)  # per channel
    return np.clip(255.0 * (im / 255.0) ** g, 0, 255).astype(np.uint8)


def _brightness(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ycc = np.asarray(Image.fromarray(im).convert("YCbCr")).astype(np.float32)
    ycc[..., 0] = ycc[..., 0] * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30)
    return np.asarray(Image.fromarray(np.clip(ycc, 0, 255).astype(np.uint8), "YCbCr").convert("RGB"))


def _sharpness(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(im)).enhance(rng.uniform(0.0, 2.0)))


def _hue_saturation(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(im).convert("HSV")).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-50, 51))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-50, 51)), 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def _solarize(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    threshold = int(rng.integers(32, 129))
    return np.asarray(ImageOps.solarize(Image.fromarray(im), threshold)) if rng.random() < 0.5 else im


def _posterize(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.posterize(Image.fromarray(im), int(rng.integers(1, 9))))


def _invert(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - im


def _autocontrast(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.autocontrast(Image.fromarray(im), cutoff=float(rng.uniform(0, 20))))


def _equalize(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.equalize(Image.fromarray(im)))


def _rotate(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(Image.fromarray(im).rotate(rng.uniform(-45, 45), resample=Image.BILINEAR))


AUGMENTATIONS: list[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = [
    _gamma, _brightness, _sharpness, _hue_saturation, _solarize,
    _posterize, _invert, _autocontrast, _equalize, _rotate,
]  # fmt: skip


def augment_source(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Three distinct random augmentations of DRAEM's list, applied in a random order."""
    picks = rng.choice(len(AUGMENTATIONS), size=3, replace=False)
    for k in picks:
        image = np.ascontiguousarray(AUGMENTATIONS[k](image, rng), dtype=np.uint8)
    return image, [AUGMENTATIONS[k].__name__.lstrip("_") for k in picks]


def shuffle_patches(image: np.ndarray, rng: np.random.Generator, grid: int = SHUFFLE_GRID) -> np.ndarray:
    """The image cut into ``grid`` x ``grid`` blocks, shuffled and randomly flipped (edges left over stay)."""
    H, W = image.shape[:2]
    bh, bw = H // grid, W // grid
    if bh == 0 or bw == 0:
        return image.copy()
    blocks = [image[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] for r in range(grid) for c in range(grid)]
    out = image.copy()
    for slot, k in enumerate(rng.permutation(len(blocks))):
        block = blocks[k]
        if rng.random() < 0.5:
            block = block[:, ::-1]
        if rng.random() < 0.5:
            block = block[::-1]
        r, c = divmod(slot, grid)
        out[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = block
    return out


def list_sources(folder: str | os.PathLike) -> list[Path]:
    """The image files under an anomaly-source folder (recursively, e.g. DTD's ``images/<class>/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: anomaly-source folder not found")
    files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if not files:
        raise InputError(f"{folder}: anomaly-source folder holds no images")
    return files


def make_pair(
    rng: np.random.Generator,
    normals: list[DefectSample],
    sources: list[Path] | None,
    size: Size | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one Perlin pair: (anomalous image, mask, record fields)."""
    n = int(rng.integers(len(normals)))
    image, fg = load_normal(normals[n], size)
    H, W = image.shape[:2]
    if sources is not None:
        s = int(rng.integers(len(sources)))
        source = resize_rgb(load_rgb(sources[s]), (W, H))
        source_name = str(sources[s].name)
    else:
        s = int(rng.integers(len(normals)))
        source = shuffle_patches(resize_rgb(load_rgb(normals[s].image), (W, H)), rng)
        source_name = f"shuffled:{normals[s].image.parent.name}/{normals[s].image.name}"
    source, augs = augment_source(source, rng)
    for _ in range(MAX_MASK_DRAWS):
        mask, info = perlin_mask((H, W), rng)
        if fg is not None:
            mask &= fg
        if mask.any():
            break
    else:
        raise InputError(
            f"{normals[n].image}: no Perlin mask overlapped the object foreground in {MAX_MASK_DRAWS} draws"
            + (f" ({normals[n].foreground})" if normals[n].foreground else "")
        )
    beta = float(rng.uniform(0.0, MAX_BETA))
    blended = (1.0 - beta) * source.astype(np.float32) + beta * image.astype(np.float32)
    out = np.where(mask[..., None], np.clip(np.rint(blended), 0, 255).astype(np.uint8), image)
    info.update(
        normal=f"{normals[n].image.parent.name}/{normals[n].image.name}",
        source=source_name,
        augmentations=augs,
        beta=round(beta, 4),
    )
    return out, mask, info


def perlin(
    normals: list[DefectSample],
    num_pairs: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    anomaly_source_dir: str | os.PathLike | None = None,
    resolution: int | Size | None = None,
    anomaly_type: str = "perlin",
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``num_pairs`` Perlin-noise pairs to ``out_dir`` (resumable) and return the writer's summary."""
    if not normals:
        raise InputError("Perlin: no normal images given")
    size = as_size(resolution)
    sources = list_sources(anomaly_source_dir) if anomaly_source_dir is not None else None
    config = {
        "method": METHOD,
        "seed": seed,
        "num_pairs": num_pairs,
        "resolution": list(size) if size else None,
        "anomaly_type": anomaly_type,
        "anomaly_source_dir": str(anomaly_source_dir) if anomaly_source_dir is not None else None,
        "num_normals": len(normals),
        **(extra_config or {}),
    }
    with output_lock(out_dir, f"baseline {METHOD}"):
        writer = GeneratedWriter(out_dir, config)
        for i in progress_bar(writer.pending(num_pairs), desc="perlin", unit="pair"):
            image, mask, info = make_pair(np.random.default_rng(writer.seed(i)), normals, sources, size)
            writer.write(
                i,
                image,
                mask,
                method=METHOD,
                anomaly_type=anomaly_type,
                foreground=config.get("foreground"),
                **info,
            )
        return {"method": METHOD, **writer.summary(num_pairs)}
