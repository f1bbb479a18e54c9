"""Check every training sample before any GPU time is spent.

All problems are collected and raised together, so a user fixes the folder once instead of
discovering one broken file per (expensive) restart.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import InputError, listed
from .images import load_mask, load_mask_for, load_rgb
from .mvtec import DefectSample


def sample_problems(sample: DefectSample) -> list[str]:
    """What is wrong with one (image, mask) sample, one message per problem naming the file; [] if usable."""
    problems: list[str] = []
    image = None
    try:
        image = load_rgb(sample.image)
    except InputError as e:
        problems.append(str(e))
    masks = [("mask", sample.mask)] + ([("foreground mask", sample.foreground)] if sample.foreground else [])
    if sample.mask is None:
        problems.append(f"{sample.image}: missing mask")
        masks = masks[1:]
    elif not sample.mask.is_file():
        problems.append(f"{sample.image}: missing mask {sample.mask}")
        masks = masks[1:]
    for label, path in masks:
        try:  # an unreadable image is reported above: then only the mask's own readability is checked
            mask = (
                load_mask(path)
                if image is None
                else load_mask_for(path, sample.image, image.shape, label=label)
            )
        except InputError as e:
            problems.append(str(e))
            continue
        if label == "mask" and not np.any(mask):
            problems.append(f"{path}: mask is empty (no pixel reaches half range, and it is not a 0/1 mask)")
    return problems


def validate_training_samples(samples: Iterable[DefectSample]) -> list[DefectSample]:
    """Return ``samples`` if every one is a usable (image, mask) pair; else raise one
    :class:`InputError` on one line naming the files and their problems (the first few, then a count)."""
    samples = list(samples)
    problems: list[str] = []
    usable = 0
    for s in samples:
        p = sample_problems(s)
        problems.extend(p)
        usable += not p
    if usable < 1:
        problems.append(f"no usable training pair (need at least 1, got {len(samples)} sample(s), 0 usable)")
    if len(problems) == 1:
        raise InputError(f"training data: {problems[0]}")
    if problems:
        raise InputError(f"{len(problems)} problems with the training data: {listed(problems)}")
    return samples
