"""Check every training sample before any GPU time is spent.

All problems are collected and raised together, so a user fixes the folder once instead of
discovering one broken file per (expensive) restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import InputError
from .images import load_mask, load_rgb
from .mvtec import DefectSample


def _load_matching(
    path: Path, label: str, image_path: Path, image: np.ndarray | None, problems: list[str]
) -> np.ndarray | None:
    """A mask loaded beside its image; a load error or a size that differs from the image is recorded."""
    try:
        mask = load_mask(path)
    except InputError as e:
        problems.append(str(e))
        return None
    if image is not None and mask.shape != image.shape[:2]:
        problems.append(
            f"{path}: {label} size {mask.shape[1]}x{mask.shape[0]} differs from image "
            f"{image_path} size {image.shape[1]}x{image.shape[0]}"
        )
    return mask


def load_matching_mask(path: Path, label: str, image_path: Path, image: np.ndarray) -> np.ndarray:
    """A mask that must have its image's size (never resized); InputError naming both files otherwise."""
    problems: list[str] = []
    mask = _load_matching(path, label, image_path, image, problems)
    if problems:
        raise InputError(problems[0])
    return mask


def _problems(sample: DefectSample) -> list[str]:
    problems: list[str] = []
    image = None
    try:
        image = load_rgb(sample.image)
    except InputError as e:
        problems.append(str(e))
    if sample.mask is None:
        problems.append(f"{sample.image}: missing mask")
    elif not sample.mask.is_file():
        problems.append(f"{sample.image}: missing mask {sample.mask}")
    else:
        mask = _load_matching(sample.mask, "mask", sample.image, image, problems)
        if mask is not None and not np.any(mask):
            problems.append(f"{sample.mask}: mask is empty after binarisation (no pixel >= half range)")
    if sample.foreground is not None:
        _load_matching(sample.foreground, "foreground mask", sample.image, image, problems)
    return problems


def validate_training_samples(samples: Iterable[DefectSample]) -> list[DefectSample]:
    """Return ``samples`` if every one is a usable (image, mask) pair; else raise one
    :class:`InputError` listing each file and its problem."""
    samples = list(samples)
    problems: list[str] = []
    usable = 0
    for s in samples:
        p = _problems(s)
        problems.extend(p)
        usable += not p
    if usable < 1:
        problems.append(f"no usable training pair (need at least 1, got {len(samples)} sample(s), 0 usable)")
    if problems:
        raise InputError(f"{len(problems)} problem(s) with the training data:\n  " + "\n  ".join(problems))
    return samples
