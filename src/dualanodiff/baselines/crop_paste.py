"""Crop&Paste: cut real defects out of the few-shot images and paste them onto normal images.

The simplest baseline of the DualAnoDiff / AnomalyDiffusion comparison. Each connected region of
a few-shot mask is one defect: its bounding box of pixels plus its own mask. A pair takes one
defect, an optional random flip and 90-degree rotation, and pastes the masked pixels at a random
position on a normal ``train/good`` image; the pasted mask is the pair's mask. When the normal
image has an object foreground mask, only positions whose whole pasted mask lies inside the
foreground are allowed (drawn uniformly among all such positions, not by trial and error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, signal

from ..data.generated import GeneratedWriter
from ..data.images import load_mask_for, load_rgb
from ..data.mvtec import DefectSample
from ..errors import InputError
from ..locking import output_lock
from ..progress import progress_bar
from .common import Size, as_size, load_normal, resize_rgb

METHOD = "crop-paste"
MIN_DEFECT_AREA = 16  # pixels; smaller specks of a mask are annotation noise, kept only if nothing else is
MAX_DRAWS = 100  # (normal, defect, transform) draws per pair before giving up


@dataclass(frozen=True)
class Defect:
    """One connected defect region: the pixels of its bounding box and its mask there."""

    patch: np.ndarray  # uint8 (h, w, 3)
    mask: np.ndarray  # bool (h, w)
    source: str  # "<type>/<file name>" of the few-shot image
    component: int  # label of the region in that image's mask, from 1


def _source_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def extract_defects(few_shot: list[DefectSample], size: Size | None = None) -> list[Defect]:
    """Every connected region (8-connectivity) of every few-shot mask, at ``size`` if given."""
    defects: list[Defect] = []
    specks: list[Defect] = []
    for sample in few_shot:
        if sample.mask is None:
            raise InputError(f"{sample.image}: few-shot defect image has no mask (Crop&Paste needs one)")
        image = load_rgb(sample.image)
        mask = load_mask_for(sample.mask, sample.image, image.shape, size=size)  # refused at another size
        if size is not None:
            image = resize_rgb(image, size)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            raise InputError(f"{sample.mask}: mask is empty")
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            region = labels[box] == k
            d = Defect(image[box].copy(), region, _source_name(sample.image), k)
            (defects if region.sum() >= MIN_DEFECT_AREA else specks).append(d)
    return defects or specks


def transform(defect: Defect, flip_h: bool, flip_v: bool, rot90: int) -> tuple[np.ndarray, np.ndarray]:
    """The defect's patch and mask flipped, then rotated by ``rot90`` quarter turns."""
    patch, mask = defect.patch, defect.mask
    if flip_h:
        patch, mask = patch[:, ::-1], mask[:, ::-1]
    if flip_v:
        patch, mask = patch[::-1], mask[::-1]
    return np.rot90(patch, rot90).copy(), np.rot90(mask, rot90).copy()


def valid_positions(mask: np.ndarray, image_hw: tuple[int, int], foreground: np.ndarray | None) -> np.ndarray:
    """Bool map over top-left corners (y, x): the patch fits in the image and its mask in the foreground.

    The count of mask pixels that would land outside the foreground is a 'valid' cross-correlation
    of the background with the mask, one FFT for all positions at once.
    """
    h, w = mask.shape
    H, W = image_hw
    if h > H or w > W:
        return np.zeros((0, 0), dtype=bool)
    if foreground is None:
        return np.ones((H - h + 1, W - w + 1), dtype=bool)
    outside = (~foreground).astype(np.float32)
    count = signal.correlate(outside, mask.astype(np.float32), mode="valid", method="auto")
    return count < 0.5


def paste(
    image: np.ndarray, patch: np.ndarray, mask: np.ndarray, y: int, x: int
) -> tuple[np.ndarray, np.ndarray]:
    """The image with the masked patch pixels pasted at (y, x), and the full-size pasted mask."""
    out = image.copy()
    full = np.zeros(image.shape[:2], dtype=bool)
    h, w = mask.shape
    full[y : y + h, x : x + w] = mask
    out[full] = patch[mask]
    return out, full


def make_pair(
    rng: np.random.Generator,
    defects_at: Any,
    normals: list[DefectSample],
    size: Size | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one pair; ``defects_at(size)`` gives the defects extracted at a normal image's size."""
    for _ in range(MAX_DRAWS):
        n = int(rng.integers(len(normals)))
        image, fg = load_normal(normals[n], size)
        defects = defects_at((image.shape[1], image.shape[0]))
        d = int(rng.integers(len(defects)))
        flip_h, flip_v, rot = bool(rng.random() < 0.5), bool(rng.random() < 0.5), int(rng.integers(4))
        patch, mask = transform(defects[d], flip_h, flip_v, rot)
        valid = valid_positions(mask, image.shape[:2], fg)
        if not valid.any():
            continue
        corners = np.argwhere(valid)
        y, x = (int(v) for v in corners[int(rng.integers(len(corners)))])
        out, full = paste(image, patch, mask, y, x)
        info = {
            "normal": _source_name(normals[n].image),
            "source": defects[d].source,
            "component": defects[d].component,
            "flip_h": flip_h,
            "flip_v": flip_v,
            "rot90": rot,
            "position": [x, y],
        }
        return out, full, info
    raise InputError(
        f"Crop&Paste: no defect fits inside the foreground of the normal images after {MAX_DRAWS} draws "
        f"(first normal: {normals[0].image}); check the foreground masks or give a larger resolution"
    )


def crop_paste(
    few_shot: list[DefectSample],
    normals: list[DefectSample],
    num_pairs: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    resolution: int | Size | None = None,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``num_pairs`` Crop&Paste pairs to ``out_dir`` (resumable) and return the writer's summary.

    ``resolution`` (int or (W, H)) resizes normals and defect sources first; by default the normal
    images keep their size and each defect source is resized to the size of the image it lands on.
    """
    if not few_shot:
        raise InputError("Crop&Paste: no few-shot defect images given")
    if not normals:
        raise InputError("Crop&Paste: no normal images given")
    size = as_size(resolution)
    anomaly_types = sorted({s.anomaly_type for s in few_shot})
    config = {
        "method": METHOD,
        "seed": seed,
        "num_pairs": num_pairs,
        "resolution": list(size) if size else None,
        "anomaly_type": anomaly_types[0] if len(anomaly_types) == 1 else anomaly_types,
        "few_shot": [_source_name(s.image) for s in few_shot],
        "num_normals": len(normals),
        **(extra_config or {}),
    }
    checked = extract_defects(few_shot, size)  # every mask read and checked before anything is written
    cache: dict[Size, list[Defect]] = {size: checked} if size else {}

    def defects_at(at: Size) -> list[Defect]:
        if at not in cache:
            cache[at] = extract_defects(few_shot, at)
        return cache[at]

    with output_lock(out_dir, f"baseline {METHOD}"):
        writer = GeneratedWriter(out_dir, config)
        for i in progress_bar(writer.pending(num_pairs), desc="crop-paste", unit="pair"):
            image, mask, info = make_pair(np.random.default_rng(writer.seed(i)), defects_at, normals, size)
            writer.write(
                i,
                image,
                mask,
                method=METHOD,
                anomaly_type=config["anomaly_type"],
                foreground=config.get("foreground"),
                **info,
            )
        return {"method": METHOD, **writer.summary(num_pairs)}
